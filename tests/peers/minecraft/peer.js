// Real Minecraft Java peers for tests/minecraft.rs, built on minecraft-protocol:
//
//   node peer.js server PORT MOTD [VERSION]      a minimal server: answers status pings with
//                                                MOTD and lets players into a world
//   node peer.js ping PORT HOST [VERSION]        a server-list ping; prints the status as JSON
//   node peer.js login PORT HOST NAME [VERSION [stay]]  a player joining; prints {"joined": true} once
//                                                the server sends the play login, or
//                                                {"kicked": REASON} / {"error": MESSAGE}
//
// Clients connect to 127.0.0.1:PORT and write HOST in their handshake, so tests can route by
// hostname without DNS.
'use strict'

const net = require('net')
const mc = require('minecraft-protocol')

const [mode, port, ...rest] = process.argv.slice(2)
const DEFAULT_VERSION = '1.16.5'

function print (value) {
  process.stdout.write(JSON.stringify(value) + '\n')
}

function stream () {
  return net.connect(Number(port), '127.0.0.1')
}

if (mode === 'server') {
  const [motd, version = DEFAULT_VERSION] = rest
  const server = mc.createServer({
    host: '127.0.0.1',
    port: Number(port),
    'online-mode': false,
    version,
    motd,
    maxPlayers: 10
  })
  const loginPacket = require('minecraft-data')(server.version).loginPacket
  server.on('listening', () => console.log(`listening on 127.0.0.1:${port}`))
  server.on('playerJoin', (client) => {
    console.log(`${client.username} joined`)
    client.write('login', {
      ...loginPacket,
      entityId: client.id,
      isHardcore: false,
      gameMode: 0,
      previousGameMode: 1,
      worldName: 'minecraft:overworld',
      hashedSeed: [0, 0],
      maxPlayers: server.maxPlayers,
      viewDistance: 2,
      reducedDebugInfo: false,
      enableRespawnScreen: true,
      isDebug: false,
      isFlat: true
    })
  })
  // The `stop` line a process backend writes on stdin.
  process.stdin.on('data', (line) => {
    if (String(line).trim() === 'stop') {
      server.close()
      process.exit(0)
    }
  })
} else if (mode === 'ping') {
  const [host, version = DEFAULT_VERSION] = rest
  mc.ping({ host, port: Number(port), version, stream: stream() })
    .then((status) => { print(status); process.exit(0) })
    .catch((e) => { print({ error: String(e && e.message ? e.message : e) }); process.exit(0) })
} else if (mode === 'login') {
  const [host, username, version = DEFAULT_VERSION] = rest
  const client = mc.createClient({
    host,
    port: Number(port),
    username,
    auth: 'offline',
    version,
    stream: stream()
  })
  let done = false
  const finish = (value) => {
    if (done) return
    done = true
    print(value)
    client.end()
    process.exit(0)
  }
  // With `stay` after the version, the player stays in the world until the process is ended.
  const stay = rest[3] === 'stay'
  client.on('login', () => stay ? print({ joined: true }) : finish({ joined: true }))
  client.on('disconnect', (packet) => finish({ kicked: packet.reason }))
  client.on('kick_disconnect', (packet) => finish({ kicked: packet.reason }))
  client.on('error', (e) => finish({ error: String(e.message || e) }))
  client.on('end', (reason) => finish({ error: `ended: ${reason}` }))
} else {
  console.error('usage: node peer.js server|ping|login PORT ...')
  process.exit(2)
}
