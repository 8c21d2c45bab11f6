// Real Minecraft Java clients for wakegate's tests and benchmark: mineflayer bots.
//
//   node bot.js PORT HOST VERSION NAME [NAME…]
//
// Each bot connects to 127.0.0.1:PORT, writing HOST in its handshake (so tests can route by
// hostname without DNS), logs in offline and plays. Everything is reported as one JSON line
// on stdout:
//   {"bot": NAME, "spawn": MS}        in the world, MS after its connect began
//   {"bot": NAME, "keep_alive": N}    the N-th keep-alive from the server (every ~4 s)
//   {"bot": NAME, "chat": TEXT}       a chat line the server sent
//   {"bot": NAME, "kicked": REASON} / {"bot": NAME, "error": MESSAGE} / {"bot": NAME, "end": REASON}
// Bots stay until stdin says so:
//   chat NAME TEXT    NAME says TEXT in the chat
//   quit              every bot leaves; the process exits once all have gone
// LIGHT=1 loads only mineflayer's game, health, kick and settings plugins: no physics, no chunk
// decoding, no chat (for the 100-bot benchmark: the gateway, not the bots, is measured).
// STAGGER_MS=N starts the bots N ms apart rather than all at once.
'use strict'

const mineflayer = require('mineflayer')

const [port, host, version, ...names] = process.argv.slice(2)
const light = process.env.LIGHT === '1'
const bots = new Map()
let open = 0

// A reader that went away is no reason for the bots to crash mid-game.
process.stdout.on('error', () => {})

function print (value) {
  process.stdout.write(JSON.stringify(value) + '\n')
}

function text (message) {
  try {
    return typeof message === 'string' ? message : JSON.stringify(message)
  } catch (e) {
    return String(message)
  }
}

const stagger = Number(process.env.STAGGER_MS || 0)
names.forEach((name, i) => setTimeout(() => join(name), i * stagger))

function join (name) {
  const began = process.hrtime.bigint()
  const bot = mineflayer.createBot({
    host,
    port: Number(port),
    username: name,
    auth: 'offline',
    version,
    viewDistance: 'tiny',
    // Light bots load only what logging in, spawning and staying need.
    ...(light ? { loadInternalPlugins: false, plugins: { game: true, health: true, kick: true, settings: true } } : {}),
    hideErrors: true,
    // The stream connects to loopback; `host` only fills the handshake.
    connect: (client) => {
      client.setSocket(require('net').connect(Number(port), '127.0.0.1'))
      client.emit('connect')
    }
  })
  bots.set(name, bot)
  open += 1
  let keepAlives = 0
  bot.once('spawn', () => {
    print({ bot: name, spawn: Number(process.hrtime.bigint() - began) / 1e6 })
  })
  bot._client.on('keep_alive', () => print({ bot: name, keep_alive: ++keepAlives }))
  bot.on('messagestr', (message) => print({ bot: name, chat: message }))
  bot.on('kicked', (reason) => print({ bot: name, kicked: text(reason) }))
  bot.on('error', (e) => print({ bot: name, error: String(e && e.message ? e.message : e) }))
  bot.on('end', (reason) => {
    print({ bot: name, end: String(reason) })
    bots.delete(name)
    if (--open === 0) process.exit(0)
  })
}

let pending = ''
process.stdin.on('data', (chunk) => {
  pending += chunk
  let at
  while ((at = pending.indexOf('\n')) >= 0) {
    const line = pending.slice(0, at).trim()
    pending = pending.slice(at + 1)
    const [command, name, ...words] = line.split(' ')
    if (command === 'quit') {
      quit()
    } else if (command === 'chat' && bots.has(name)) {
      bots.get(name).chat(words.join(' '))
    }
  }
})
// A closed stdin (the test went away) is a quit too.
process.stdin.on('end', quit)

function quit () {
  if (bots.size === 0) process.exit(0)
  for (const bot of bots.values()) bot.quit()
  setTimeout(() => process.exit(0), 2000).unref()
}
