// A real Minecraft Java server for wakegate's tests and benchmark: flying-squid, run as a
// `process` backend.
//
//   node squid.js PORT VERSION [MOTD]
//
// It listens on 127.0.0.1:PORT in offline mode with a small superflat world, prints
// {"listening": PORT} and vanilla's `Done (…s)!` line once it takes players, and stops the way a vanilla server does:
// `save-all` and `stop` lines on stdin. With RCON_PORT (and RCON_PASSWORD) in its environment it
// also answers RCON there (rcon_server.js), with the same two commands. WORLD_DIR, when set,
// is where the world is saved, so a test can see that `save-all` really wrote it.
// IGNORE_SIGTERM=1 makes it a server that does not stop on SIGTERM (a hung JVM), so the kill
// after `stop_timeout` can be seen.
'use strict'

// On SIGTERM flying-squid saves and quits (exit code 143), as vanilla does; its handler is
// registered with process.once by exit-hook, some time after start. A hung server ignores it.
if (process.env.IGNORE_SIGTERM === '1') {
  process.on('SIGTERM', () => print({ ignored: 'SIGTERM' }))
  const once = process.once.bind(process)
  process.once = (event, listener) => event === 'SIGTERM' ? process : once(event, listener)
}

const mcServer = require('flying-squid')

const [port, version = '1.16.5', motd = 'flying-squid'] = process.argv.slice(2)
const worldFolder = process.env.WORLD_DIR || undefined

function print (value) {
  process.stdout.write(JSON.stringify(value) + '\n')
}

const serv = mcServer.createMCServer({
  host: '127.0.0.1',
  port: Number(port),
  'online-mode': false,
  version,
  motd,
  'max-players': 200,
  logging: false,
  gameMode: 1,
  difficulty: 0,
  worldFolder,
  generation: { name: 'superflat', options: { worldHeight: 80 } },
  kickTimeout: 10000,
  plugins: {},
  modpe: false,
  'view-distance': 2,
  'player-list-text': { header: { text: 'wakegate' }, footer: { text: 'test' } },
  'everybody-op': false,
  'max-entities': 100
})

const began = Date.now()
// The line a vanilla server prints once it takes players (wakegate's log readiness looks for it).
serv.on('ready', () => {
  print({ listening: Number(port), version })
  console.log(`Done (${((Date.now() - began) / 1000).toFixed(3)}s)! For help, type "help"`)
})
serv.on('newPlayer', (player) => {
  player.on('spawned', () => print({ joined: player.username }))
  player.on('disconnected', () => print({ left: player.username }))
})
serv.on('error', (e) => print({ error: String(e && e.message ? e.message : e) }))

let stopping = false
const commands = {
  // What vanilla's `save-all` does: every player and every loaded chunk on disk.
  'save-all': async () => {
    print({ command: 'save-all' })
    await Promise.all(serv.players.map((player) => player.save()))
    if (worldFolder) await serv.overworld.saveNow()
    print({ saved: worldFolder || null })
    return 'Saved the game'
  },
  stop: async () => {
    print({ command: 'stop' })
    if (stopping) return 'Stopping the server'
    stopping = true
    // Answer first, like vanilla, which replies before it shuts down.
    setImmediate(async () => {
      await serv.quit('Server closed')
      print({ exiting: 0 })
      process.exit(0)
    })
    return 'Stopping the server'
  }
}

async function run (line) {
  const command = commands[line.trim()]
  if (!command) return `Unknown command: ${line.trim()}`
  return command()
}

// flying-squid reads stdin as its own console, where `stop` exits at once and `save-all` is
// unknown; this file's console replaces it.
process.stdin.removeAllListeners('data')
process.stdin.removeAllListeners('end')

// Console lines run one after the other, as on a vanilla server: `save-all` then `stop`
// saves before it stops.
let pending = ''
let queue = Promise.resolve()
process.stdin.on('data', (chunk) => {
  pending += chunk
  let at
  while ((at = pending.indexOf('\n')) >= 0) {
    const line = pending.slice(0, at)
    pending = pending.slice(at + 1)
    if (line.trim()) queue = queue.then(() => run(line))
  }
})

if (process.env.RCON_PORT) {
  require('./rcon_server').listen(Number(process.env.RCON_PORT), process.env.RCON_PASSWORD || '', run, print)
}
