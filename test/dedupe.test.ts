import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { Client, connect, serve, sign } from './helpers/server.js'
import type { ForgeSocketOptions, OutboundMessage } from '../plugin.js'
import { LocalCommandStore } from '../lib/dedupe.js'

const ANN = sign({ sub: 'ann' })
const BOB = sign({ sub: 'bob' })

/** A deferred: a handler that waits on it is a command under way until the test lets it finish. */
function gate (): { promise: Promise<void>, open: () => void } {
  let open!: () => void
  const promise = new Promise<void>((resolve) => { open = resolve })
  return { promise, open }
}

/**
 * A server whose `note` command counts its runs (per text) and answers `{ runs, text, id }`; `slow` waits for the
 * test's gate; `fail` throws (a coded error when asked to); `big` answers a long string.
 */
async function server (t: Parameters<typeof serve>[0], options: ForgeSocketOptions = {}): Promise<{ app: FastifyInstance, base: string, runs: Map<string, number>, gates: Array<ReturnType<typeof gate>> }> {
  const runs = new Map<string, number>()
  const gates: Array<ReturnType<typeof gate>> = []
  const count = (key: string): number => {
    const n = (runs.get(key) ?? 0) + 1
    runs.set(key, n)
    return n
  }
  const { app, base } = await serve(t, options, (app) => {
    app.get('/open/:room', app.socket.act('open', (app, ps) => ps.upgrade(`room-${ps.requestString('room', true)}`), { auth: 'optional' }))
    app.socket.command('note', { handler: (param, ctx) => ({ runs: count(String((param as { text: string }).text)), id: ctx.id ?? null }) })
    app.socket.command('slow', {
      handler: async (param) => {
        const g = gate()
        gates.push(g)
        const n = count('slow')
        await g.promise
        if ((param as { fail?: boolean } | null)?.fail === true) throw new Error('slow and broken')
        return { runs: n }
      }
    })
    app.socket.command('fail', {
      handler: (param) => {
        const n = count('fail')
        if ((param as { coded?: boolean }).coded === true) throw Object.assign(new Error(`refused run ${n}`), { code: 'APP_REFUSED', statusCode: 409 })
        throw new Error(`internal ${n}`)
      }
    })
    app.socket.command('big', { handler: () => ({ text: 'x'.repeat(200), runs: count('big') }) })
    app.socket.command('query', { dedupe: false, handler: () => ({ runs: count('query') }) })
  })
  return { app, base, runs, gates }
}

/** Sends `message` with `ref` and waits for the answer with that ref. */
async function ask (client: Client, message: Record<string, unknown>, ref: string): Promise<OutboundMessage & { dup?: boolean }> {
  const answer = client.next((m) => m.ref === ref)
  client.send({ channel: 'room-lobby', param: null, ...message, ref })
  return await answer
}

/** Resolves once `check` holds, polling each turn of the event loop (bounded by tap's timeout). */
async function until (check: () => boolean): Promise<void> {
  while (!check()) await new Promise((resolve) => setImmediate(resolve))
}

test('connected tells the client the window and the scope of its ids', async (t) => {
  const { base } = await server(t)
  const { client, connected } = await connect(`${base}/ws/lobby`, ANN)
  t.same((connected.param as { dedupe: unknown }).dedupe, { window: 120000, scope: 'user' })
  client.close()
  const anonymous = await connect(`${base}/open/lobby`)
  t.same((anonymous.connected.param as { dedupe: unknown }).dedupe, { window: 120000, scope: 'connection' }, 'an anonymous connection: its own ids only')
  anonymous.client.close()
})

test('the same id twice: run once, the repeat answered with the first answer, its own ref and dup: true', async (t) => {
  const { base, runs } = await server(t)
  const { client } = await connect(`${base}/ws/lobby`, ANN)
  const first = await ask(client, { cmd: 'note', param: { text: 'hi' }, id: 'abc.1' }, 'r1')
  t.strictSame(first, { channel: 'room-lobby', cmd: 'reply', param: { runs: 1, id: 'abc.1' }, ref: 'r1' }, 'the first answer, no dup; the handler saw the id')
  const again = await ask(client, { cmd: 'note', param: { text: 'hi' }, id: 'abc.1' }, 'r2')
  t.strictSame(again, { channel: 'room-lobby', cmd: 'reply', param: { runs: 1, id: 'abc.1' }, ref: 'r2', dup: true })
  t.equal(runs.get('hi'), 1, 'the handler ran once')

  // Another id runs; a message without an id always runs.
  t.same((await ask(client, { cmd: 'note', param: { text: 'hi' }, id: 'abc.2' }, 'r3')).param, { runs: 2, id: 'abc.2' })
  t.same((await ask(client, { cmd: 'note', param: { text: 'hi' } }, 'r4')).param, { runs: 3, id: null })
  t.same((await ask(client, { cmd: 'note', param: { text: 'hi' } }, 'r5')).param, { runs: 4, id: null })
  client.close()
})

test('the scope is the user: another connection of the same user is deduped, another user runs', async (t) => {
  const { base, runs } = await server(t)
  const ann = await connect(`${base}/ws/lobby`, ANN)
  await ask(ann.client, { cmd: 'note', param: { text: 'x' }, id: 'same' }, 'a1')
  ann.client.close()
  const annAgain = await connect(`${base}/ws/lobby`, ANN)
  const repeat = await ask(annAgain.client, { cmd: 'note', param: { text: 'x' }, id: 'same' }, 'a2')
  t.equal(repeat.dup, true, 'the same user on a new connection: the first answer')
  const bob = await connect(`${base}/ws/lobby`, BOB)
  const other = await ask(bob.client, { cmd: 'note', param: { text: 'x' }, id: 'same' }, 'b1')
  t.equal(other.dup, undefined, 'another user with the same id: runs')
  t.same(other.param, { runs: 2, id: 'same' })
  t.equal(runs.get('x'), 2)
  annAgain.client.close()
  bob.client.close()
})

test('anonymous connections: ids are deduped within the connection only', async (t) => {
  const { base, runs } = await server(t)
  const one = await connect(`${base}/open/lobby`)
  await ask(one.client, { cmd: 'note', param: { text: 'anon' }, id: 'k' }, 'o1')
  t.equal((await ask(one.client, { cmd: 'note', param: { text: 'anon' }, id: 'k' }, 'o2')).dup, true)
  const two = await connect(`${base}/open/lobby`)
  t.equal((await ask(two.client, { cmd: 'note', param: { text: 'anon' }, id: 'k' }, 't1')).dup, undefined, 'another anonymous connection runs it')
  t.equal(runs.get('anon'), 2)
  one.client.close()
  two.client.close()
})

test('a repeat while the first run is under way: one run, both answered (the repeat with dup)', async (t) => {
  const { base, runs, gates } = await server(t)
  const { client } = await connect(`${base}/ws/lobby`, ANN)
  const first = client.next((m) => m.ref === 's1')
  client.send({ channel: 'room-lobby', cmd: 'slow', param: null, id: 'slow.1', ref: 's1' })
  await until(() => gates.length === 1)
  const second = client.next((m) => m.ref === 's2')
  client.send({ channel: 'room-lobby', cmd: 'slow', param: null, id: 'slow.1', ref: 's2' })
  // From another connection of the same user, too.
  const other = await connect(`${base}/ws/lobby`, ANN)
  const third = other.client.next((m) => m.ref === 's3')
  other.client.send({ channel: 'room-lobby', cmd: 'slow', param: null, id: 'slow.1', ref: 's3' })
  // A ping after the repeats has its pong: the repeats were taken in before the gate opens.
  await other.client.request('room-lobby', 'ping', null, 'p')
  gates[0]?.open()
  t.strictSame(await first, { channel: 'room-lobby', cmd: 'reply', param: { runs: 1 }, ref: 's1' })
  t.strictSame(await second, { channel: 'room-lobby', cmd: 'reply', param: { runs: 1 }, ref: 's2', dup: true })
  t.strictSame(await third, { channel: 'room-lobby', cmd: 'reply', param: { runs: 1 }, ref: 's3', dup: true })
  t.equal(runs.get('slow'), 1, 'one run')
  client.close()
  other.client.close()
})

test('a repeat still waiting when the lease ends gets FST_SOCKET_IN_PROGRESS; the run answers its own message', async (t) => {
  const { base, gates } = await server(t, { dedupe: { lease: 30 } })
  const { client } = await connect(`${base}/ws/lobby`, ANN)
  const first = client.next((m) => m.ref === 'l1')
  client.send({ channel: 'room-lobby', cmd: 'slow', param: null, id: 'lease.1', ref: 'l1' })
  await until(() => gates.length === 1)
  const late = await ask(client, { cmd: 'slow', id: 'lease.1' }, 'l2')
  t.match(late, { cmd: 'error', ref: 'l2', dup: true, param: { code: 'FST_SOCKET_IN_PROGRESS' } })
  t.match((late.param as { message: string }).message, /try it again later with the same id/)
  gates[0]?.open()
  t.same((await first).param, { runs: 1 })
  client.close()
})

test('a handler that throws keeps no record: a retry runs again; a repeat that waited gets the same error', async (t) => {
  const { base, runs, gates } = await server(t)
  const { client } = await connect(`${base}/ws/lobby`, ANN)
  const crash = await ask(client, { cmd: 'fail', param: { coded: false }, id: 'f.1' }, 'f1')
  t.match(crash.param, { code: 'FST_SOCKET_HANDLER_FAILED' }, 'an internal error stays hidden')
  t.equal(crash.dup, undefined)
  const retry = await ask(client, { cmd: 'fail', param: { coded: false }, id: 'f.1' }, 'f2')
  t.match(retry.param, { code: 'FST_SOCKET_HANDLER_FAILED' })
  t.equal(runs.get('fail'), 2, 'the retry ran')
  const coded = await ask(client, { cmd: 'fail', param: { coded: true }, id: 'f.2' }, 'f3')
  t.same(coded.param, { code: 'APP_REFUSED', message: 'refused run 3' })
  const codedAgain = await ask(client, { cmd: 'fail', param: { coded: true }, id: 'f.2' }, 'f4')
  t.same(codedAgain.param, { code: 'APP_REFUSED', message: 'refused run 4' }, 'a coded refusal keeps no record either')

  // Under way, then failing: the repeat that waited is answered with the run's error.
  const first = client.next((m) => m.ref === 'w1')
  client.send({ channel: 'room-lobby', cmd: 'slow', param: { fail: true }, id: 'f.3', ref: 'w1' })
  await until(() => gates.length === 1)
  const waiting = client.next((m) => m.ref === 'w2')
  client.send({ channel: 'room-lobby', cmd: 'slow', param: { fail: true }, id: 'f.3', ref: 'w2' })
  await client.request('room-lobby', 'ping', null, 'p')
  gates[0]?.open()
  t.match(await first, { cmd: 'error', param: { code: 'FST_SOCKET_HANDLER_FAILED' } })
  t.match(await waiting, { cmd: 'error', dup: true, param: { code: 'FST_SOCKET_HANDLER_FAILED' } })
  const rerun = client.next((m) => m.ref === 'w3')
  client.send({ channel: 'room-lobby', cmd: 'slow', param: null, id: 'f.3', ref: 'w3' })
  await until(() => gates.length === 2)
  gates[1]?.open()
  t.same((await rerun).param, { runs: 2 }, 'after the failure, the id runs again')
  client.close()
})

test('refusals before the handler keep no record: a repeat after subscribing runs', async (t) => {
  const { base, runs } = await server(t, { authorizeChannel: () => true })
  const { client } = await connect(`${base}/ws/lobby`, ANN)
  const outside = await ask(client, { channel: 'room-other', cmd: 'note', param: { text: 'o' }, id: 'n.1' }, 'n1')
  t.match(outside.param, { code: 'FST_SOCKET_NOT_SUBSCRIBED' })
  await client.request('room-other', 'subscribe', null, 'sub')
  const inside = await ask(client, { channel: 'room-other', cmd: 'note', param: { text: 'o' }, id: 'n.1' }, 'n2')
  t.same(inside.param, { runs: 1, id: 'n.1' })
  t.equal(runs.get('o'), 1)
  client.close()
})

test('a repeat without a ref is not run and gets no answer', async (t) => {
  const { base, runs } = await server(t)
  const { client } = await connect(`${base}/ws/lobby`, ANN)
  client.send({ channel: 'room-lobby', cmd: 'note', param: { text: 'ff' }, id: 'ff.1' })
  client.send({ channel: 'room-lobby', cmd: 'note', param: { text: 'ff' }, id: 'ff.1' })
  await client.request('room-lobby', 'ping', null, 'p')
  t.equal(runs.get('ff'), 1)
  t.same(client.messages.filter((m) => m.cmd === 'reply' || m.cmd === 'error'), [], 'no answers')
  client.close()
})

test('an id that is not 1–64 characters of string is FST_SOCKET_BAD_REQUEST with the ref, and nothing runs', async (t) => {
  const { base, runs } = await server(t)
  const { client } = await connect(`${base}/ws/lobby`, ANN)
  for (const [i, id] of (['', 'x'.repeat(65), 42, null, { a: 1 }] as unknown[]).entries()) {
    const answer = await ask(client, { cmd: 'note', param: { text: 'bad' }, id }, `b${i}`)
    t.match(answer, { cmd: 'error', ref: `b${i}`, param: { code: 'FST_SOCKET_BAD_REQUEST' } }, `id ${JSON.stringify(id)}`)
  }
  t.equal(runs.get('bad'), undefined)
  const longest = await ask(client, { cmd: 'note', param: { text: 'bad' }, id: 'y'.repeat(64) }, 'ok')
  t.same(longest.param, { runs: 1, id: 'y'.repeat(64) }, '64 characters are fine')
  client.close()
})

test('reserved commands ignore the id: each runs', async (t) => {
  const { base } = await server(t, { authorizeChannel: () => true })
  const { client } = await connect(`${base}/ws/lobby`, ANN)
  const a = await ask(client, { channel: 'room-x', cmd: 'subscribe', id: 'r.1' }, 's1')
  const b = await ask(client, { channel: 'room-x', cmd: 'unsubscribe', id: 'r.1' }, 's2')
  const c = await ask(client, { channel: 'room-x', cmd: 'subscribe', id: 'r.1' }, 's3')
  t.same([a, b, c].map((m) => [m.cmd, m.dup]), [['reply', undefined], ['reply', undefined], ['reply', undefined]])
  const pong = client.next((m) => m.ref === 'p')
  client.send({ channel: 'room-lobby', cmd: 'ping', param: null, id: 'r.1', ref: 'p' })
  t.equal((await pong).cmd, 'pong')
  client.close()
})

test('a command registered with dedupe: false runs every time, ids or not; an unknown command is refused as before', async (t) => {
  const { app, base, runs } = await server(t)
  const { client } = await connect(`${base}/ws/lobby`, ANN)
  t.same((await ask(client, { cmd: 'query', id: 'q.1' }, 'q1')).param, { runs: 1 })
  const again = await ask(client, { cmd: 'query', id: 'q.1' }, 'q2')
  t.same([again.param, again.dup], [{ runs: 2 }, undefined])
  t.equal(runs.get('query'), 2)
  t.match(await ask(client, { cmd: 'nope', id: 'q.2' }, 'q3'), { cmd: 'error', param: { code: 'FST_SOCKET_UNKNOWN_COMMAND' } })
  t.equal(app.socket.status().dedupe?.entries, 0, 'nothing was kept')
  t.throws(() => app.socket.command('odd', { dedupe: 'no' as unknown as boolean, handler: () => null }), { code: 'FST_SOCKET_INVALID_OPTIONS' })
  client.close()
})

test('an answer over maxAnswerBytes is not kept: the repeat gets FST_SOCKET_DUPLICATE, and nothing runs again', async (t) => {
  const { base, runs } = await server(t, { dedupe: { maxAnswerBytes: 100 } })
  const { client } = await connect(`${base}/ws/lobby`, ANN)
  const first = await ask(client, { cmd: 'big', id: 'big.1' }, 'g1')
  t.equal((first.param as { text: string }).text.length, 200, 'the first answer is whole')
  const again = await ask(client, { cmd: 'big', id: 'big.1' }, 'g2')
  t.match(again, { cmd: 'error', dup: true, param: { code: 'FST_SOCKET_DUPLICATE' } })
  t.match((again.param as { message: string }).message, /"big\.1" was handled already; its answer \(\d+ bytes\) was too large to keep/)
  t.equal(runs.get('big'), 1)
  client.close()
})

test('past the window an id runs again', async (t) => {
  const { base, runs } = await server(t, { dedupe: { window: 20 } })
  const { client } = await connect(`${base}/ws/lobby`, ANN)
  await ask(client, { cmd: 'note', param: { text: 'w' }, id: 'w.1' }, 'w1')
  // The window is 20 ms from the answer: 40 ms on, it has passed whatever the machine's load.
  await new Promise((resolve) => setTimeout(resolve, 40))
  const again = await ask(client, { cmd: 'note', param: { text: 'w' }, id: 'w.1' }, 'w2')
  t.equal(again.dup, undefined)
  t.equal(runs.get('w'), 2)
  client.close()
})

test('dedupe: false — no window in connected, every message runs', async (t) => {
  const { base, runs } = await server(t, { dedupe: false })
  const { client, connected } = await connect(`${base}/ws/lobby`, ANN)
  t.notOk('dedupe' in (connected.param as object))
  await ask(client, { cmd: 'note', param: { text: 'off' }, id: 'o.1' }, 'o1')
  t.equal((await ask(client, { cmd: 'note', param: { text: 'off' }, id: 'o.1' }, 'o2')).dup, undefined)
  t.equal(runs.get('off'), 2)
  client.close()
})

test('status() reports the in-process record', async (t) => {
  const { app, base } = await server(t, { dedupe: { maxEntries: 2 } })
  const { client } = await connect(`${base}/ws/lobby`, ANN)
  for (const id of ['a', 'b', 'c']) await ask(client, { cmd: 'note', param: { text: 's' }, id }, id)
  t.match(app.socket.status().dedupe, { entries: 2, evictions: 1 })
  t.ok((app.socket.status().dedupe?.bytes ?? 0) > 0)
  t.equal((await ask(client, { cmd: 'note', param: { text: 's' }, id: 'a' }, 'a2')).dup, undefined, 'the evicted id runs again')
  client.close()
})

test('invalid dedupe options are refused at register time', async (t) => {
  for (const dedupe of [{ window: 0 }, { lease: -1 }, { maxEntries: 0 }, { maxBytes: 10 }, { maxAnswerBytes: 1 }, { other: 1 }, true, 'on']) {
    await t.rejects(serve(t, { dedupe } as unknown as ForgeSocketOptions), { code: 'FST_SOCKET_INVALID_OPTIONS' }, JSON.stringify(dedupe))
  }
})

test('LocalCommandStore: claims, answers, releases, expiry and its bounds', async (t) => {
  let now = 1000
  const store = new LocalCommandStore({ maxEntries: 3, maxBytes: 1_000_000 }, () => now)
  t.equal(store.claimCommand('u:ann', '1', 100), null, 'a first claim')
  t.same(store.claimCommand('u:ann', '1', 100), { state: 'pending' })
  t.equal(store.claimCommand('u:bob', '1', 100), null, 'scopes apart')
  t.equal(store.claimCommand('u:an', 'n1', 100), null, 'no key runs into another ("u:an"+"n1" is not "u:ann"+"1")')
  store.finishCommand('u:ann', '1', '{"cmd":"reply","param":1}', 500)
  t.same(store.commandRecord('u:ann', '1'), { state: 'done', answer: '{"cmd":"reply","param":1}' })
  store.releaseCommand('u:ann', '1')
  t.same(store.commandRecord('u:ann', '1'), { state: 'done', answer: '{"cmd":"reply","param":1}' }, 'release leaves an answer alone')
  store.releaseCommand('u:bob', '1')
  t.equal(store.commandRecord('u:bob', '1'), null, 'release deletes a pending record')
  now += 101
  t.equal(store.commandRecord('u:an', 'n1'), null, 'a lease ends')
  t.same(store.commandRecord('u:ann', '1'), { state: 'done', answer: '{"cmd":"reply","param":1}' }, 'the answer is kept for its window')
  now += 400
  t.equal(store.commandRecord('u:ann', '1'), null, 'and gone after it')
  for (const id of ['a', 'b', 'c', 'd']) store.finishCommand('u:ann', id, '{}', 1000)
  t.same(store.counts.entries, 3)
  t.same(store.counts.evictions, 1)
  t.equal(store.commandRecord('u:ann', 'a'), null, 'the oldest went first')
  const bytes = new LocalCommandStore({ maxEntries: 1000, maxBytes: 2000 }, () => now)
  for (let i = 0; i < 50; i++) bytes.finishCommand('u:ann', String(i), 'x'.repeat(100), 1000)
  t.ok(bytes.counts.bytes <= 2000, `bytes within the bound (${bytes.counts.bytes})`)
  t.ok(bytes.counts.evictions > 0)
})

test('the in-process record stays flat over 1,000,000 ids: bounded, the oldest evicted and counted', async (t) => {
  // In a child with --expose-gc, so the heap is measured after a full collection (dist/, built by `pretest`).
  const script = `
    const { LocalCommandStore } = await import(${JSON.stringify(new URL('../dist/lib/dedupe.js', import.meta.url).href)})
    const store = new LocalCommandStore({ maxEntries: 100000, maxBytes: 33554432 })
    const heap = () => { globalThis.gc(); return process.memoryUsage().heapUsed }
    const run = (from, to) => {
      for (let i = from; i < to; i++) {
        const id = 'Zq8vPcW1xY0bN3tK.' + i.toString(36)
        if (store.claimCommand('u:user-' + (i % 1000), id, 30000) === null) store.finishCommand('u:user-' + (i % 1000), id, '{"cmd":"reply","param":{"saved":' + i + '}}', 120000)
      }
    }
    run(0, 200000)
    const at200k = heap()
    run(200000, 1000000)
    const at1m = heap()
    process.stdout.write(JSON.stringify({ at200k, at1m, counts: store.counts }))
  `
  const { execFile } = await import('node:child_process')
  const out = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { maxBuffer: 1 << 20 }, (err, stdout) => err === null ? resolve(stdout) : reject(err))
  })
  const { at200k, at1m, counts } = JSON.parse(out) as { at200k: number, at1m: number, counts: { entries: number, bytes: number, evictions: number } }
  t.equal(counts.entries, 100000, 'at its bound')
  t.equal(counts.evictions, 900000, 'every id past the bound evicted one, and was counted')
  const growth = at1m - at200k
  t.ok(growth < 4 * 1024 * 1024, `the heap after 1,000,000 ids is within 4 MiB of the heap after 200,000 (${(growth / 1048576).toFixed(2)} MiB)`)
})
