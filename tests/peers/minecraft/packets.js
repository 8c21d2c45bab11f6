// Writes and reads Minecraft Java packets with the real minecraft-protocol package, for
// tests/minecraft_codec.rs to compare with wakegate's codec. Reads a JSON list of jobs on
// stdin and prints a JSON list of results, one per job:
//   {"op": "write", "version", "state", "to": "server" | "client", "name", "params"} → {"hex"}
//   {"op": "read",  "version", "state", "to": "server" | "client", "hex"} → {"name", "params"}
// "hex" is a whole frame (length prefix included). In params, {"$bigint": "…"} stands for a
// 64-bit integer and {"$hex": "…"} for bytes, both ways. A job that fails gives {"error"}.
'use strict'

const mc = require('minecraft-protocol')
const [readVarInt, writeVarInt, sizeOfVarInt] = require('protodef').types.varint

function frame (body) {
  const out = Buffer.alloc(sizeOfVarInt(body.length) + body.length)
  body.copy(out, writeVarInt(body.length, out, 0))
  return out
}

function unframe (bytes) {
  const { value, size } = readVarInt(bytes, 0)
  if (size + value !== bytes.length) {
    throw new Error(`the frame's prefix announces ${value} bytes, but ${bytes.length - size} follow it`)
  }
  return bytes.subarray(size)
}

function revive (value) {
  if (Array.isArray(value)) return value.map(revive)
  if (value === null || typeof value !== 'object') return value
  if ('$bigint' in value) return BigInt(value.$bigint)
  if ('$hex' in value) return Buffer.from(value.$hex, 'hex')
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, revive(v)]))
}

function plain (key, value) {
  // protodef reads a 64-bit integer as an array of two halves whose valueOf is a BigInt.
  if (Array.isArray(value) && typeof value.valueOf() === 'bigint') value = value.valueOf()
  if (typeof value === 'bigint') return { $bigint: value.toString() }
  if (value && value.type === 'Buffer' && Array.isArray(value.data)) {
    return { $hex: Buffer.from(value.data).toString('hex') }
  }
  return value
}

function run (job) {
  // A client writes packets "to server" and reads those "to client".
  const toServer = job.to === 'server'
  if (job.op === 'write') {
    const serializer = mc.createSerializer({ state: job.state, isServer: !toServer, version: job.version })
    const body = serializer.createPacketBuffer({ name: job.name, params: revive(job.params) })
    return { hex: frame(body).toString('hex') }
  }
  const deserializer = mc.createDeserializer({ state: job.state, isServer: toServer, version: job.version, noErrorLogging: true })
  const body = unframe(Buffer.from(job.hex, 'hex'))
  const packet = deserializer.parsePacketBuffer(body)
  if (packet.metadata.size !== body.length) {
    throw new Error(`read ${packet.metadata.size} of the packet's ${body.length} bytes`)
  }
  return { name: packet.data.name, params: packet.data.params }
}

let input = ''
process.stdin.setEncoding('utf8')
process.stdin.on('data', (chunk) => { input += chunk })
process.stdin.on('end', () => {
  const results = JSON.parse(input).map((job) => {
    try {
      return run(job)
    } catch (e) {
      return { error: String(e && e.message) }
    }
  })
  process.stdout.write(JSON.stringify(results, plain) + '\n')
})
