// Broadcasts are framed once and written to each socket directly, corked until the end of the tick. What a user
// checks: every size arrives intact, in order with replies and other frames, with and without permessage-deflate.
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyWebsocket from '@fastify/websocket'
import forgeSocket from '../plugin.js'
import { Duplex } from 'node:stream'
import { framePayload, textFrame, writeFrame, corkTick } from '../lib/frame.js'
import { listen, room, serve, sign, connect, SECRET } from './helpers/server.js'

t.test('textFrame: the RFC 6455 header for each payload length class', async (t) => {
  for (const [length, header] of [[0, [0x81, 0]], [125, [0x81, 125]], [126, [0x81, 126, 0, 126]], [65535, [0x81, 126, 255, 255]],
    [65536, [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]]] as Array<[number, number[]]>) {
    const text = 'a'.repeat(length)
    const frame = textFrame(text)
    t.same([...frame.subarray(0, header.length)], header, `${length} bytes`)
    t.equal(frame.length, header.length + length)
    t.equal(frame.subarray(header.length).toString(), text, 'then the payload')
    t.equal(framePayload(frame).toString(), text, 'which framePayload finds')
  }
  const utf8 = textFrame('żółw')
  t.equal(utf8[1], Buffer.byteLength('żółw'), 'the length counts UTF-8 bytes, not characters')
  t.equal(framePayload(utf8).toString(), 'żółw')
})

function burst (app: FastifyInstance): void {
  // Broadcasts (corked frames), then replies (through ws): the client must see them in that order.
  app.socket.command('burst', {
    handler: (param, { channel }) => {
      for (const size of param as number[]) app.socket.broadcast(channel, { cmd: 'sized', param: 'x'.repeat(size) })
      return { sent: (param as number[]).length }
    }
  })
}

const SIZES = [0, 1, 100, 125, 126, 200, 65535, 65536, 300_000]

t.test('broadcasts of every size arrive intact and in order, before the reply that followed them', async (t) => {
  const { base } = await serve(t, {}, burst)
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  const order: string[] = []
  client.ws.on('message', (data) => { const m = JSON.parse(data.toString()) as { cmd: string }; order.push(m.cmd) })
  const reply = await client.request('room-a', 'burst', SIZES)
  t.same(reply.param, { sent: SIZES.length })
  t.same(order, [...SIZES.map(() => 'sized'), 'reply'], 'every broadcast before the reply')
  const sized = client.messages.filter((m) => m.cmd === 'sized')
  t.same(sized.map((m) => (m.param as string).length), SIZES, 'every size intact')
  t.same(sized.map((m) => m.seq), SIZES.map((_, i) => i + 1), 'numbered in order')
  client.close()
  await client.closed
})

t.test('with permessage-deflate negotiated, broadcasts go through ws (compressed) and still arrive in order', async (t) => {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(fastifyWebsocket, { options: { perMessageDeflate: { threshold: 0 } }, preClose: (done) => done() })
  await app.register(forgeSocket, { jwt: { secret: SECRET } })
  room(app)
  burst(app)
  const base = await listen(app)
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }), { perMessageDeflate: true })
  t.match(client.ws.extensions, /permessage-deflate/, 'deflate was negotiated')
  const reply = await client.request('room-a', 'burst', SIZES)
  t.same(reply.param, { sent: SIZES.length })
  t.same(client.messages.filter((m) => m.cmd === 'sized').map((m) => (m.param as string).length), SIZES)
  client.close()
  await client.closed
})

t.test('writeFrame: what one tick writes to a stream leaves in one write at the end of the tick, each tick its own', async (t) => {
  /** A stream that records each write it is asked to make (one per system call, on a socket). */
  function recorder (): { stream: Duplex, writes: string[][] } {
    const writes: string[][] = []
    const stream = new Duplex({
      read () {},
      write (chunk: Buffer, _encoding, callback) { writes.push([framePayload(chunk).toString()]); callback() },
      writev (chunks, callback) { writes.push(chunks.map(({ chunk }) => framePayload(chunk as Buffer).toString())); callback() }
    })
    return { stream, writes }
  }
  const a = recorder()
  const b = recorder()
  let stampA = 0
  let stampB = 0
  stampA = writeFrame(a.stream, textFrame('1'), stampA)
  stampB = writeFrame(b.stream, textFrame('x'), stampB)
  stampA = writeFrame(a.stream, textFrame('2'), stampA)
  stampA = writeFrame(a.stream, textFrame('3'), stampA)
  t.same(a.writes, [], 'nothing written during the tick')
  await new Promise((resolve) => process.nextTick(resolve))
  t.same(a.writes, [['1', '2', '3']], 'the tick\'s frames in one write, in order')
  t.same(b.writes, [['x']], 'each stream its own')
  t.equal(a.stream.writableCorked, 0, 'uncorked')
  // A later tick: the stamp the last write returned is stale, so the stream is corked again.
  stampA = writeFrame(a.stream, textFrame('4'), stampA)
  writeFrame(a.stream, textFrame('5'), stampA)
  await new Promise((resolve) => setImmediate(resolve))
  t.same(a.writes, [['1', '2', '3'], ['4', '5']], 'the next tick\'s frames in a write of their own')
  // corkTick (the upgrade's answer) and writeFrame in one tick: both uncorked at its end, one write.
  corkTick(b.stream)
  b.stream.write(textFrame('101'))
  writeFrame(b.stream, textFrame('connected'), stampB)
  await new Promise((resolve) => setImmediate(resolve))
  t.same(b.writes, [['x'], ['101', 'connected']])
  t.equal(b.stream.writableCorked, 0)
})
