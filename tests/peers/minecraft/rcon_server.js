// RCON (Minecraft's remote console) for squid.js: flying-squid has none, so this adds the
// protocol as a vanilla server speaks it, in front of the server's own commands.
//
// A packet is an int32 length of the rest, then int32 request id, int32 type and the body
// ending in two NULs, all little-endian. Login is type 3 and is answered by type 2 with the
// request's id, or id -1 when the password is wrong (vanilla then keeps the connection open
// but runs nothing); a command is type 2 and is answered by type 0 with the same id.
'use strict'

const net = require('net')

const LOGIN = 3
const COMMAND = 2
const AUTH_RESPONSE = 2
const RESPONSE = 0

function packet (id, type, body) {
  const text = Buffer.from(body, 'utf8')
  const out = Buffer.alloc(14 + text.length)
  out.writeInt32LE(10 + text.length, 0)
  out.writeInt32LE(id, 4)
  out.writeInt32LE(type, 8)
  text.copy(out, 12)
  return out
}

// run(command) → Promise of the answer text; print(value) reports a JSON line. The password is
// never printed: the log says only whether a login was accepted.
function listen (port, password, run, print) {
  const server = net.createServer((socket) => {
    let authed = false
    let pending = Buffer.alloc(0)
    socket.on('error', () => {})
    socket.on('data', async (chunk) => {
      pending = Buffer.concat([pending, chunk])
      while (pending.length >= 4) {
        const len = pending.readInt32LE(0)
        if (len < 10 || len > 4110) {
          print({ rcon: 'bad packet', len })
          socket.destroy()
          return
        }
        if (pending.length < 4 + len) return
        const id = pending.readInt32LE(4)
        const type = pending.readInt32LE(8)
        const body = pending.subarray(12, 4 + len - 2).toString('utf8')
        pending = pending.subarray(4 + len)
        if (type === LOGIN) {
          authed = password !== '' && body === password
          print({ rcon: authed ? 'login accepted' : 'login refused' })
          socket.write(packet(authed ? id : -1, AUTH_RESPONSE, ''))
        } else if (type === COMMAND && authed) {
          const answer = await run(body)
          if (!socket.destroyed) socket.write(packet(id, RESPONSE, answer))
        } else {
          socket.write(packet(-1, AUTH_RESPONSE, ''))
        }
      }
    })
  })
  server.listen(port, '127.0.0.1', () => print({ rcon: 'listening', port }))
  return server
}

module.exports = { listen }
