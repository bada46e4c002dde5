// The token expiry queue: one heap and one timer for every connection. What a user of it checks: each item falls
// due once, at its latest deadline, in deadline order; removed items never do.
import t from 'tap'
import fc from 'fast-check'
import { Deadlines, type Deadlined } from '../lib/deadlines.js'

interface Item extends Deadlined {
  name: number
}

const item = (name: number): Item => ({ name, deadline: 0, deadlineSlot: -1 })

/** Collects what falls due, and resolves once `count` items have. */
function collector (count: number): { queue: Deadlines<Item>, due: Item[], done: Promise<void> } {
  const due: Item[] = []
  let resolve = (): void => {}
  const done = new Promise<void>((r) => { resolve = r })
  const queue = new Deadlines<Item>((it) => {
    due.push(it)
    if (due.length === count) resolve()
  })
  if (count === 0) resolve()
  return { queue, due, done }
}

/** The queue's timer is unref'd (it must not keep a server alive): a test holds the process open while it waits. */
async function held (promise: Promise<unknown>): Promise<void> {
  const keep = setInterval(() => {}, 1000)
  try {
    await promise
  } finally {
    clearInterval(keep)
  }
}

type Op = { op: 'set', name: number, at: number } | { op: 'delete', name: number }

t.test('any sequence of sets and deletes: each remaining item falls due once, at its last deadline, in order', async (t) => {
  const ops = fc.array(fc.oneof(
    fc.record({ op: fc.constant('set' as const), name: fc.nat(15), at: fc.nat(1000) }),
    fc.record({ op: fc.constant('delete' as const), name: fc.nat(15) })
  ), { maxLength: 80 })
  await fc.assert(fc.asyncProperty(ops, async (ops: Op[]) => {
    // Every deadline is in the past, so all fall due on the first timer.
    const base = Date.now() - 10_000
    const items = Array.from({ length: 16 }, (_, i) => item(i))
    const expected = new Map<number, number>()
    for (const o of ops) {
      if (o.op === 'set') expected.set(o.name, base + o.at)
      else expected.delete(o.name)
    }
    const { queue, due, done } = collector(expected.size)
    for (const o of ops) {
      const it = items[o.name] as Item
      if (o.op === 'set') queue.set(it, base + o.at)
      else queue.delete(it)
    }
    if (queue.size !== expected.size) throw new Error(`size ${queue.size}, ${expected.size} expected`)
    await held(done)
    await new Promise((resolve) => setImmediate(resolve))
    const seen = due.map((it) => it.name)
    if (new Set(seen).size !== seen.length) throw new Error(`an item fell due twice: ${seen.join(',')}`)
    if (seen.length !== expected.size) throw new Error(`${seen.length} fell due, ${expected.size} expected`)
    for (const it of due) if (it.deadline !== expected.get(it.name)) throw new Error(`item ${it.name} fell due for a stale deadline`)
    for (let i = 1; i < due.length; i++) {
      if ((due[i - 1] as Item).deadline > (due[i] as Item).deadline) throw new Error(`out of order: ${due.map((d) => d.deadline).join(',')}`)
    }
    if (queue.size !== 0 || due.some((it) => it.deadlineSlot !== -1)) throw new Error('items left in the queue')
  }), { numRuns: 200 })
  t.pass('200 sequences')
})

t.test('items fall due at their time: a moved deadline is kept, a removed item never falls due', async (t) => {
  const { queue, due, done } = collector(2)
  const [late, early, removed] = [item(1), item(2), item(3)]
  const now = Date.now()
  queue.set(late, now + 10)
  queue.set(early, now + 60)
  queue.set(removed, now + 20)
  queue.set(late, now + 80) // moved later: it no longer falls due first
  queue.set(early, now + 30) // moved earlier
  queue.delete(removed)
  await held(done)
  t.same(due.map((it) => it.name), [2, 1])
  t.ok(Date.now() >= now + 80, 'not before its deadline')
  t.equal(queue.size, 0)
})

t.test('an item added after the timer was armed, with an earlier deadline, falls due first', async (t) => {
  const { queue, due, done } = collector(2)
  const now = Date.now()
  queue.set(item(1), now + 60)
  queue.set(item(2), now + 5)
  await held(done)
  t.same(due.map((it) => it.name), [2, 1])
})

t.test('clear() empties the queue and stops its timer; the queue works after it', async (t) => {
  const { queue, due } = collector(1)
  const far = item(1)
  queue.set(far, Date.now() + 40 * 24 * 3600 * 1000)
  t.equal(queue.size, 1)
  queue.clear()
  t.equal(queue.size, 0)
  t.equal(far.deadlineSlot, -1)
  queue.delete(far) // not queued: nothing happens
  queue.set(far, Date.now() - 1)
  await held(new Promise((resolve) => setTimeout(resolve, 5)))
  t.same(due, [far], 'usable after clear()')
})
