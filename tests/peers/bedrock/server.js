// A real Bedrock server (bedrock-protocol's createServer) for wakegate's tests: it logs every
// player in (offline mode) and keeps them; its pong counts them. Usage: node server.js PORT VERSION
const bedrock = require('bedrock-protocol')

const [port, version] = [Number(process.argv[2]), process.argv[3]]
const server = bedrock.createServer({
  host: '127.0.0.1',
  port,
  version,
  offline: true,
  maxPlayers: 20,
  motd: { motd: 'real bedrock server', levelName: 'test level' }
})
server.on('connect', client => {
  client.on('join', () => console.log(`joined ${client.getUserData().displayName}`))
})
console.log(`listening on ${port}`)
