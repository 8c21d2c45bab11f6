// A real Bedrock server (bedrock-protocol's createServer) for wakegate's tests and benchmark:
// it logs every player in (offline mode), spawns them (a `player_spawn` play status: there is
// no world to load) and keeps them; its pong counts them.
//   node server.js PORT VERSION
// BOOT_DELAY_MS makes it wait that long before it listens (a slow boot).
const bedrock = require('bedrock-protocol')

const [port, version] = [Number(process.argv[2]), process.argv[3]]
setTimeout(() => {
  const server = bedrock.createServer({
    host: '127.0.0.1',
    port,
    version,
    offline: true,
    maxPlayers: 20,
    motd: { motd: 'real bedrock server', levelName: 'test level' }
  })
  server.on('connect', client => {
    client.on('join', () => {
      console.log(`joined ${client.getUserData().displayName}`)
      client.write('play_status', { status: 'player_spawn' })
    })
  })
  console.log(`listening on ${port}`)
}, Number(process.env.BOOT_DELAY_MS || 0))
