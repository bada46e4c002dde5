// Gap healing on its own (lib/continuity.ts): a node's members of a channel with history get its messages in seq
// order, each once, whatever order they arrive in; a gap is filled from the stream once; what can't be is a
// channel-reset. The stream is a real Streams (the memory broker's); the members are a list of what was written.
// End to end over Redis (a killed pub/sub connection, a restarted Redis): test/redis-recovery.test.ts.
import t from 'tap'
import { Continuity } from '../lib/continuity.js'
import { Streams } from '../lib/broker/streams.js'
import type { StreamPosition } from '../lib/broker/broker.js'
import type { OutboundMessage } from '../schemas/envelope.js'
import { silentLog } from './helpers/connections.js'

const SETTINGS = { size: 5, ttl: 60_000, metaTtl: 600_000, maxRecover: 1000 }

/** A continuity over a real stream, whose members' deliveries are recorded; `reads` counts the stream reads. */
function setup (): { continuity: Continuity, streams: Streams, got: OutboundMessage[], reads: () => number, append: (n: number) => OutboundMessage & { seq: number }, epoch: () => string } {
  const streams = new Streams()
  const got: OutboundMessage[] = []
  let reads = 0
  const continuity = new Continuity({
    deliver: (_channel, message) => { got.push(message); return 1 },
    read: async (channel, since, limit) => { reads++; return streams.read(channel, since, limit, SETTINGS) },
    position: async (channel) => streams.position(channel, SETTINGS),
    log: silentLog
  })
  continuity.track('c')
  const append = (n: number): OutboundMessage & { seq: number } => {
    const { seq } = streams.append('c', { channel: 'c', cmd: 'say', param: n }, SETTINGS)
    return { channel: 'c', cmd: 'say', param: n, seq }
  }
  return { continuity, streams, got, reads: () => reads, append, epoch: () => streams.position('c', SETTINGS).epoch }
}

const seqs = (got: OutboundMessage[]): Array<number | string | undefined> => got.map((m) => m.cmd === 'say' ? m.seq : m.cmd)

/** Resolves once the reads and deliveries under way have settled (they are promise callbacks). */
const settle = async (): Promise<void> => { for (let i = 0; i < 5; i++) await Promise.resolve() }

t.test('in order: each delivered at once; a duplicate is dropped', async (t) => {
  const { continuity, got, append, epoch, reads } = setup()
  const [a, b] = [append(1), append(2)]
  continuity.receive('c', a, epoch())
  continuity.receive('c', b, epoch())
  continuity.receive('c', a, epoch())
  t.same(seqs(got), [1, 2])
  t.equal(reads(), 0)
})

t.test('this node\'s own append answered after a later message from another node: waited for, no read', async (t) => {
  const { continuity, got, append, epoch, reads } = setup()
  continuity.receive('c', append(1), epoch())
  continuity.appending('c')
  const own = append(2)
  continuity.receive('c', append(3), epoch())
  t.same(seqs(got), [1], '3 waits for 2')
  t.equal(continuity.appended('c', own, epoch()), 1)
  t.same(seqs(got), [1, 2, 3])
  await settle()
  t.equal(reads(), 0, 'the stream was not read')
})

t.test('a message lost on the way: filled from the stream once, in order, before what came after it', async (t) => {
  const { continuity, got, append, epoch, reads } = setup()
  continuity.receive('c', append(1), epoch())
  append(2)
  append(3)
  continuity.receive('c', append(4), epoch())
  continuity.receive('c', append(5), epoch())
  await settle()
  t.same(seqs(got), [1, 2, 3, 4, 5])
  t.equal(reads(), 1)
})

t.test('a gap the stream no longer has: channel-reset (gap) before the next message, then on from there', async (t) => {
  const { continuity, got, append, epoch } = setup()
  continuity.receive('c', append(1), epoch())
  for (let i = 2; i <= 8; i++) append(i) // size 5: 2 and 3 are gone
  continuity.receive('c', append(9), epoch())
  await settle()
  t.same(seqs(got), [1, 'channel-reset', 9])
  t.same(got[1]?.param, { epoch: epoch(), seq: 8, reason: 'gap' })
})

t.test('a stream that began again: channel-reset (epoch) with the new position; the old epoch\'s stragglers are dropped', async (t) => {
  const { continuity, got, append, epoch } = setup()
  const old = epoch()
  continuity.receive('c', append(1), old)
  continuity.receive('c', { channel: 'c', cmd: 'say', param: 'new', seq: 1 }, 'new-epoch')
  continuity.receive('c', append(2), old)
  t.same(got.map((m) => m.cmd), ['say', 'channel-reset', 'say'])
  t.same(got[1]?.param, { epoch: 'new-epoch', seq: 0, reason: 'epoch' })
  t.equal(got[2]?.param, 'new')
})

t.test('resumed: a lost last message is found and delivered; a stream that began again is a reset', async (t) => {
  const { continuity, streams, got, append, epoch } = setup()
  continuity.receive('c', append(1), epoch())
  append(2)
  continuity.resumed()
  await settle()
  t.same(seqs(got), [1, 2], 'the top was past what the members had: read')
  const other = new Streams()
  const position: StreamPosition = other.position('c', SETTINGS)
  const fresh = new Continuity({
    deliver: (_channel, message) => { got.push(message); return 1 },
    read: async (channel, since, limit) => streams.read(channel, since, limit, SETTINGS),
    position: async () => position,
    log: silentLog
  })
  fresh.track('c')
  fresh.receive('c', { channel: 'c', cmd: 'say', param: 2, seq: 2 }, epoch())
  fresh.resumed()
  await settle()
  t.same(got.at(-1), { channel: 'c', cmd: 'channel-reset', param: { epoch: position.epoch, seq: 0, reason: 'epoch' } })
})

t.test('untracked channels (no member here) are delivered as they come', async (t) => {
  const { continuity, got, append, epoch } = setup()
  continuity.untrack('c')
  append(1)
  continuity.receive('c', append(2), epoch())
  t.same(seqs(got), [2])
})
