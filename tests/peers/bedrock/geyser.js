// A Java server with Geyser, for wakegate's tests: flying-squid (tests/peers/minecraft) for
// Java players and bedrock-protocol's server for Bedrock ones, in one process, the way Geyser
// runs inside a Java server. As with Geyser, Bedrock players are players of the Java server:
// its status ping counts them.
//   node geyser.js JAVA_PORT BEDROCK_PORT JAVA_VERSION BEDROCK_VERSION
// Prints vanilla's `Done (…)!` line once the Java server takes players (the Bedrock one
// listens from the start), and one JSON line per player who joins or leaves
// ({"joined": NAME, "edition": …} / {"left": …}).
'use strict'
const path = require('path')
const bedrock = require('bedrock-protocol')
const mcServer = require(path.join(__dirname, '../minecraft/node_modules/flying-squid'))

const [javaPort, bedrockPort, javaVersion, bedrockVersion] = process.argv.slice(2)
const print = value => process.stdout.write(JSON.stringify(value) + '\n')
const began = Date.now()
const bedrockPlayers = new Set()

const java = mcServer.createMCServer({
  host: '127.0.0.1',
  port: Number(javaPort),
  'online-mode': false,
  version: javaVersion,
  motd: 'geyser server',
  'max-players': 50,
  logging: false,
  gameMode: 1,
  difficulty: 0,
  generation: { name: 'superflat', options: { worldHeight: 80 } },
  kickTimeout: 10000,
  plugins: {},
  modpe: false,
  'view-distance': 2,
  'player-list-text': { header: { text: 'wakegate' }, footer: { text: 'test' } },
  'everybody-op': false,
  'max-entities': 100,
  // Geyser's players are the Java server's: the status ping counts both editions.
  beforePing: response => {
    response.players.online += bedrockPlayers.size
    return response
  }
})
java.on('newPlayer', player => {
  player.on('spawned', () => print({ joined: player.username, edition: 'java' }))
  player.on('disconnected', () => print({ left: player.username, edition: 'java' }))
})

const server = bedrock.createServer({
  host: '127.0.0.1',
  port: Number(bedrockPort),
  version: bedrockVersion,
  offline: true,
  maxPlayers: 50,
  motd: { motd: 'geyser server', levelName: 'geyser level' }
})
server.on('connect', client => {
  client.on('join', () => {
    const name = client.getUserData().displayName
    bedrockPlayers.add(client)
    print({ joined: name, edition: 'bedrock' })
    client.write('play_status', { status: 'player_spawn' })
    client.on('close', () => {
      if (bedrockPlayers.delete(client)) print({ left: name, edition: 'bedrock' })
    })
  })
})

java.on('ready', () => {
  console.log(`Done (${((Date.now() - began) / 1000).toFixed(3)}s)! For help, type "help"`)
})
