// Bedrock clients for wakegate's tests (bedrock-protocol, native RakNet).
//   node client.js ping HOST PORT          prints the pong's advertisement as JSON
//   node client.js join HOST PORT VERSION NAME HOLD_MS
//                                          logs in (offline mode), prints "joined", stays
//                                          HOLD_MS, then leaves; exits 1 on an error
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
  const [version, username, hold] = [process.argv[5], process.argv[6], Number(process.argv[7])]
  const client = bedrock.createClient({ host, port, version, username, offline: true, connectTimeout: 20000 })
  client.on('join', () => {
    console.log('joined')
    setTimeout(() => { client.disconnect('leaving'); setTimeout(() => process.exit(0), 100) }, hold)
  })
  client.on('kick', p => { console.error(`kicked: ${p.message}`); process.exit(1) })
  client.on('error', e => { console.error(`error: ${e}`); process.exit(1) })
}
