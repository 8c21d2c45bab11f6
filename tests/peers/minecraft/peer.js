// Real Minecraft Java peers for tests/minecraft.rs, built on minecraft-protocol:
//
//   node peer.js server PORT MOTD [VERSION]      a minimal server: answers status pings with
//                                                MOTD and lets players into a world
//   node peer.js ping PORT HOST [VERSION]        a server-list ping; prints the status as JSON
//   node peer.js login PORT HOST NAME [VERSION [stay]]  a player joining; prints {"joined": true} once
//                                                the server sends the play login, or
//                                                {"kicked": REASON} / {"error": MESSAGE}
//
// A joining player told to go elsewhere with a Transfer packet (1.20.5+) does what the vanilla
// client does: it connects to the host and port given, with intent 3 (transfer) in its
// handshake, and logs in again; "transferred": "HOST:PORT" and the keep-alives it answered
// while it waited are added to what it prints.
//
// With PROXY_LOG=FILE in its environment, the server expects a PROXY protocol v2 header on
// each connection (connections without one are let through too, as health checks come
// without it), parses it and appends {"source": "IP:PORT", "destination": "IP:PORT"} to FILE,
// one JSON line each ({"local": true} for a LOCAL header, {"source": null} for none).
//
// A player arriving with intent 3 (transfer) is refused as vanilla refuses it by default (a
// login disconnect `multiplayer.disconnect.transfers_disabled`, at once); with
// ACCEPTS_TRANSFERS=1 the server takes it as a login, like vanilla with accepts-transfers=true.
//
// The server's status sample names the players in the world, as vanilla servers do.
// With PEER_LOCAL_PORT=1 a joining player also prints the local port of its (first) connection,
// as "localPort".
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

// PEER_HOST=::1 makes the clients connect over IPv6.
function stream () {
  return net.connect(Number(port), process.env.PEER_HOST || '127.0.0.1')
}

// Reads a PROXY protocol v2 header at the start of `buf`: {header: bytes used, source,
// destination}, null when `buf` does not start with one, or undefined when more bytes are needed.
const SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex')
function proxyHeader (buf) {
  const known = Math.min(buf.length, SIGNATURE.length)
  if (!buf.subarray(0, known).equals(SIGNATURE.subarray(0, known))) return null
  if (buf.length < 16) return undefined
  const verCmd = buf[12]
  const family = buf[13]
  const length = buf.readUInt16BE(14)
  if (verCmd >> 4 !== 2) throw new Error(`PROXY header version ${verCmd >> 4}`)
  if (buf.length < 16 + length) return undefined
  const body = buf.subarray(16, 16 + length)
  let source = null
  let destination = null
  if ((verCmd & 0xf) === 1 && family === 0x11) {
    const ip = (b) => Array.from(b).join('.')
    source = `${ip(body.subarray(0, 4))}:${body.readUInt16BE(8)}`
    destination = `${ip(body.subarray(4, 8))}:${body.readUInt16BE(10)}`
  } else if ((verCmd & 0xf) === 1 && family === 0x21) {
    const ip = (b) => '[' + Array.from({ length: 8 }, (_, i) => b.readUInt16BE(2 * i).toString(16)).join(':') + ']'
    source = `${ip(body.subarray(0, 16))}:${body.readUInt16BE(32)}`
    destination = `${ip(body.subarray(16, 32))}:${body.readUInt16BE(34)}`
  } else if ((verCmd & 0xf) !== 0) {
    throw new Error(`PROXY header command ${verCmd & 0xf}, family ${family}`)
  }
  return { header: 16 + length, local: (verCmd & 0xf) === 0, source, destination }
}

if (mode === 'server') {
  const [motd, version = DEFAULT_VERSION] = rest
  const proxyLog = process.env.PROXY_LOG
  const server = mc.createServer({
    host: '127.0.0.1',
    // Behind the PROXY header parser, the server itself takes any free port.
    port: proxyLog ? 0 : Number(port),
    'online-mode': false,
    version,
    motd,
    maxPlayers: 10,
    beforePing: (response) => {
      const players = Object.values(server.clients).filter((c) => c.state === 'play' && c.username)
      response.players.online = players.length
      response.players.sample = players.map((c) => ({ name: c.username, id: c.uuid }))
      return response
    }
  })
  const loginPacket = require('minecraft-data')(server.version).loginPacket
  const acceptsTransfers = process.env.ACCEPTS_TRANSFERS === '1'
  // minecraft-protocol knows intents 1 and 2 only; its own handshake handler runs first.
  server.on('connection', (client) => {
    client.once('set_protocol', (packet) => {
      if (packet.nextState !== 3) return
      client.state = mc.states.LOGIN
      if (!acceptsTransfers) {
        console.log('refused a transfer')
        client.end('', JSON.stringify({ translate: 'multiplayer.disconnect.transfers_disabled' }))
      }
    })
  })
  server.on('listening', () => {
    if (!proxyLog) return console.log(`listening on 127.0.0.1:${port}`)
    const inner = server.socketServer.address().port
    const front = net.createServer((socket) => {
      let buf = Buffer.alloc(0)
      const onData = (chunk) => {
        buf = Buffer.concat([buf, chunk])
        let parsed
        try { parsed = proxyHeader(buf) } catch (e) { socket.destroy(); return }
        if (parsed === undefined) return
        socket.off('data', onData)
        const { appendFileSync } = require('fs')
        const line = !parsed ? { source: null } : parsed.local ? { local: true } : { source: parsed.source, destination: parsed.destination }
        appendFileSync(proxyLog, JSON.stringify(line) + '\n')
        const rest = parsed ? buf.subarray(parsed.header) : buf
        const upstream = net.connect(inner, '127.0.0.1', () => {
          upstream.write(rest)
          socket.pipe(upstream)
          upstream.pipe(socket)
        })
        upstream.on('error', () => socket.destroy())
        socket.on('error', () => upstream.destroy())
      }
      socket.on('data', onData)
    })
    front.listen(Number(port), '127.0.0.1', () => console.log(`listening on 127.0.0.1:${port} behind PROXY v2`))
  })
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
  // With `stay` after the version, the player stays in the world until the process is ended.
  const stay = rest[3] === 'stay'
  const extra = {}
  let done = false
  let client
  const finish = (value) => {
    if (done) return
    done = true
    print({ ...value, ...extra })
    client.end()
    process.exit(0)
  }
  const join = (options, transfer) => {
    const current = mc.createClient({ username, auth: 'offline', version, ...options })
    client = current
    if (transfer) {
      // minecraft-protocol always writes intent 2 (login); a transferred vanilla client writes 3.
      const write = current.write.bind(current)
      current.write = (name, params) => write(name, name === 'set_protocol' ? { ...params, nextState: 3 } : params)
    }
    current.on('keep_alive', () => {
      if (current.state === 'configuration') extra.keepAlives = (extra.keepAlives || 0) + 1
    })
    current.on('transfer', (packet) => {
      extra.transferred = `${packet.host}:${packet.port}`
      current.removeAllListeners('end')
      current.removeAllListeners('error')
      current.on('error', () => {})
      current.end()
      join({ host: packet.host, port: packet.port, stream: net.connect(packet.port, packet.host) }, true)
    })
    current.on('login', () => stay ? print({ joined: true, ...extra }) : finish({ joined: true }))
    current.on('disconnect', (packet) => finish({ kicked: packet.reason }))
    current.on('kick_disconnect', (packet) => finish({ kicked: packet.reason }))
    current.on('error', (e) => finish({ error: String(e.message || e) }))
    current.on('end', (reason) => finish({ error: `ended: ${reason}` }))
  }
  const first = stream()
  if (process.env.PEER_LOCAL_PORT) first.on('connect', () => { extra.localPort = first.localPort })
  join({ host, port: Number(port), stream: first }, false)
} else {
  console.error('usage: node peer.js server|ping|login PORT ...')
  process.exit(2)
}
