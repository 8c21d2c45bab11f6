// Bedrock clients for wakegate's tests and benchmark (bedrock-protocol, native RakNet).
//   node client.js ping HOST PORT          prints the pong's advertisement as JSON
//   node client.js join HOST PORT VERSION NAME HOLD_MS
//                                          logs in (offline mode) and waits to be spawned in
//                                          the world; prints "joined MS" then "spawned MS"
//                                          (MS: milliseconds since the client started), stays
//                                          HOLD_MS, then leaves; exits 1 on an error.
// CONNECT_TIMEOUT_MS sets how long the client waits for the server to answer its connection
// requests (bedrock-protocol's connectTimeout; 20000 here). With GO_ON_STDIN=1 a join prints
// "ready" once loaded and starts when a line comes on stdin (so that a test can time it).
const bedrock = require('bedrock-protocol')

const [mode, host, port] = [process.argv[2], process.argv[3], Number(process.argv[4])]
if (mode === 'ping') {
  bedrock.ping({ host, port }).then(ad => {
    console.log(JSON.stringify(ad))
    process.exit(0)
  }).catch(e => {
    console.error(`ping failed: ${e}`)
    process.exit(1)
  })
} else {
  if (process.env.GO_ON_STDIN === '1') {
    console.log('ready')
    process.stdin.once('data', join)
  } else {
    join()
  }
}

function join () {
  const [version, username, hold] = [process.argv[5], process.argv[6], Number(process.argv[7])]
  const connectTimeout = Number(process.env.CONNECT_TIMEOUT_MS || 20000)
  const began = process.hrtime.bigint()
  const ms = () => (Number(process.hrtime.bigint() - began) / 1e6).toFixed(1)
  const client = bedrock.createClient({ host, port, version, username, offline: true, connectTimeout })
  client.on('join', () => console.log(`joined ${ms()}`))
  client.on('spawn', () => {
    console.log(`spawned ${ms()}`)
    setTimeout(() => { client.disconnect('leaving'); setTimeout(() => process.exit(0), 100) }, hold)
  })
  client.on('kick', p => { console.error(`kicked: ${p.message}`); process.exit(1) })
  client.on('error', e => { console.error(`error: ${e}`); process.exit(1) })
}
