import t from 'tap'
import { readdir, readFile } from 'node:fs/promises'
import {
  backoffDelay,
  closeAction,
  DEFAULT_BACKOFF,
  DEFAULT_QUEUE,
  OutboundQueue,
  QueueFullError,
  refusalAction,
  resolveUrl,
  RETRY_AFTER_CAP,
  retryAfterMs,
  Socket,
  SocketError,
  type BackoffOptions,
  type DropReason,
  type QueueOptions
} from '../lib/client/index.js'
import { watchRefusal, type Refusal, type UpgradeResponse } from '../lib/client/refusal.js'
import { inState } from './helpers/client-state.js'

/** A seeded pseudo-random source (mulberry32), so the "many draws" checks are the same on every run. */
function seeded (seed: number): () => number {
  let a = seed
  return () => {
    a = (a + 0x6D2B79F5) | 0
    let r = Math.imul(a ^ (a >>> 15), 1 | a)
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296
  }
}

const never = (): number => 0
const almostOne = (): number => 0.999999

t.test('backoffDelay', async (t) => {
  t.test('the defaults are 500 ms → 20 s, doubling, full jitter', async (t) => {
    t.same({ ...DEFAULT_BACKOFF }, { initialDelay: 500, maxDelay: 20_000, factor: 2, jitter: 1 })
    t.ok(Object.isFrozen(DEFAULT_BACKOFF), 'the defaults cannot be changed by accident')
  })

  t.test('grows by the factor and stops at the cap', async (t) => {
    const options: BackoffOptions = { initialDelay: 100, maxDelay: 5000, factor: 3, jitter: 0 }
    t.same([0, 1, 2, 3, 4, 5, 20].map((n) => backoffDelay(n, options)), [100, 300, 900, 2700, 5000, 5000, 5000])
    t.same([0, 1, 2, 6, 7, 100].map((n) => backoffDelay(n, DEFAULT_BACKOFF, false, never)), [500, 1000, 2000, 20_000, 20_000, 20_000])
  })

  t.test('full jitter: anywhere between 0 and the ceiling', async (t) => {
    t.equal(backoffDelay(2, DEFAULT_BACKOFF, false, never), 2000, 'random() = 0 gives the ceiling')
    t.equal(backoffDelay(2, DEFAULT_BACKOFF, false, almostOne), 0, 'random() ≈ 1 gives about 0')
    t.equal(backoffDelay(30, DEFAULT_BACKOFF, false, almostOne), 0)
    const random = seeded(42)
    for (const attempt of [0, 1, 3, 5, 10]) {
      const ceiling = Math.min(20_000, 500 * 2 ** attempt)
      const delays = Array.from({ length: 2000 }, () => backoffDelay(attempt, DEFAULT_BACKOFF, false, random))
      t.ok(delays.every((d) => Number.isInteger(d) && d >= 0 && d <= ceiling), `attempt ${attempt}: every delay within [0, ${ceiling}]`)
      // Spread over the whole range, not bunched at one end.
      t.ok(Math.min(...delays) < ceiling * 0.05 && Math.max(...delays) > ceiling * 0.95, `attempt ${attempt}: delays spread over the range`)
    }
  })

  t.test('with Math.random by default, still within bounds', async (t) => {
    const delays = Array.from({ length: 500 }, () => backoffDelay(1, DEFAULT_BACKOFF))
    t.ok(delays.every((d) => d >= 0 && d <= 1000))
  })

  t.test('jitter 0 is exact; partial jitter randomizes only that fraction', async (t) => {
    const exact: BackoffOptions = { ...DEFAULT_BACKOFF, jitter: 0 }
    t.equal(backoffDelay(3, exact, false, almostOne), 4000)
    t.equal(backoffDelay(3, exact, false, seeded(7)), 4000)
    const half: BackoffOptions = { ...DEFAULT_BACKOFF, jitter: 0.5 }
    t.equal(backoffDelay(3, half, false, never), 4000)
    t.equal(backoffDelay(3, half, false, almostOne), 2000)
    const random = seeded(3)
    const delays = Array.from({ length: 2000 }, () => backoffDelay(3, half, false, random))
    t.ok(delays.every((d) => d >= 2000 && d <= 4000), 'every delay within [ceiling / 2, ceiling]')
    const quarter: BackoffOptions = { ...DEFAULT_BACKOFF, jitter: 0.25 }
    t.ok(Array.from({ length: 500 }, () => backoffDelay(0, quarter, false, random)).every((d) => d >= 375 && d <= 500))
  })

  t.test('an overloaded server (1013) starts from a higher delay', async (t) => {
    const exact: BackoffOptions = { ...DEFAULT_BACKOFF, jitter: 0 }
    t.equal(backoffDelay(0, exact, true), 4000, 'three doublings ahead')
    t.ok(backoffDelay(0, exact, true) > backoffDelay(0, exact, false))
    t.equal(backoffDelay(1, exact, true), 8000)
    t.equal(backoffDelay(10, exact, true), 20_000, 'still capped')
    t.ok(Array.from({ length: 500 }, () => backoffDelay(0, DEFAULT_BACKOFF, true, seeded(9))).every((d) => d >= 0 && d <= 4000))
  })
})

t.test('closeAction follows the close-code policy', async (t) => {
  for (const code of [1000, 4000, 4003]) t.equal(closeAction(code), 'stop', `${code} stops`)
  t.equal(closeAction(4001), 'refresh-token')
  t.equal(closeAction(1013), 'reconnect-slowly')
  for (const code of [1001, 1003, 1006, 1007, 1008, 1009, 1011, 4008, 4999]) t.equal(closeAction(code), 'reconnect', `${code} reconnects`)
})

t.test('refusalAction: what an HTTP status before the upgrade makes the client do', async (t) => {
  t.equal(refusalAction(401), 'refresh-token')
  for (const status of [429, 503]) t.equal(refusalAction(status), 'reconnect-slowly', `${status} backs off longer`)
  for (const status of [408, 500, 502, 504, 599]) t.equal(refusalAction(status), 'reconnect', `${status} backs off`)
  for (const status of [0, 101, 200, 301, 302, 400, 403, 404, 405, 426, 431, 600]) t.equal(refusalAction(status), 'stop', `${status} stops`)
})

t.test('retryAfterMs', async (t) => {
  const now = Date.parse('2025-01-01T00:00:00Z')
  t.equal(retryAfterMs('120', now), 120_000, 'delay-seconds')
  t.equal(retryAfterMs(' 5 ', now), 5000, 'with spaces')
  t.equal(retryAfterMs('0', now), 0)
  t.equal(retryAfterMs('Wed, 01 Jan 2025 00:00:30 GMT', now), 30_000, 'an HTTP date')
  t.equal(retryAfterMs('Tue, 31 Dec 2024 23:00:00 GMT', now), 0, 'a date in the past is now')
  t.equal(retryAfterMs(['7', '9'], now), 7000, 'the first of repeated headers')
  t.equal(retryAfterMs('86400', now), RETRY_AFTER_CAP, 'a day is cut to the cap')
  t.equal(RETRY_AFTER_CAP, 300_000, 'five minutes')
  t.equal(retryAfterMs('9'.repeat(400), now), RETRY_AFTER_CAP)
  for (const bad of [undefined, '', '   ', 'soon', '1.5', []]) t.equal(retryAfterMs(bad as string | string[] | undefined, now), 0, `${JSON.stringify(bad)} is none`)
  t.ok(retryAfterMs(new Date(Date.now() + 60_000).toUTCString()) > 50_000, 'now is Date.now() by default')
})

t.test('watchRefusal', async (t) => {
  /** A fake `ws` WebSocket and the response it would hand to 'unexpected-response'. */
  function refusedWith (status: number | undefined, headers: Record<string, string> = {}): { refusal: () => Refusal | undefined, reads: () => number, emit: (event: string, chunk?: string) => void } {
    const listeners = new Map<string, Array<(chunk: string) => void>>()
    let seen: Refusal | undefined
    let reads = 0
    const response: UpgradeResponse = {
      statusCode: status,
      headers,
      setEncoding: () => response,
      on: (event: string, fn: (chunk: string) => void) => { listeners.set(event, [...(listeners.get(event) ?? []), fn]); return response }
    }
    const ws = {
      on: (event: string, fn: (request: unknown, response: UpgradeResponse) => void) => { if (event === 'unexpected-response') fn({}, response) }
    }
    watchRefusal(ws, (refusal) => { seen = refusal }, () => { reads++ })
    return {
      refusal: () => seen,
      reads: () => reads,
      emit: (event, chunk = '') => { for (const fn of listeners.get(event) ?? []) fn(chunk) }
    }
  }

  t.test('the status and Retry-After at once, the code once the body has ended', async (t) => {
    const r = refusedWith(429, { 'retry-after': '3' })
    t.same(r.refusal(), { status: 429, retryAfter: 3000, serverCode: undefined })
    t.equal(r.reads(), 0, 'the body is still to come')
    r.emit('data', '{"statusCode":429,"code":"FST_SOCKET_')
    r.emit('data', 'TOO_MANY_CONNECTIONS","error":"Too Many Requests"}')
    r.emit('end')
    r.emit('close')
    t.equal(r.refusal()?.serverCode, 'FST_SOCKET_TOO_MANY_CONNECTIONS')
    t.equal(r.reads(), 1, 'done once, however the body ends')
  })

  t.test('a body that is not a plausible error body has no code', async (t) => {
    for (const body of ['not json', 'null', '"FST_X"', '[1]', '{"code":42}', '{"code":"has spaces"}', `{"code":"${'A'.repeat(65)}"}`, '{}']) {
      const r = refusedWith(400)
      r.emit('data', body)
      r.emit('end')
      t.equal(r.refusal()?.serverCode, undefined, body.slice(0, 20))
    }
    const ok = refusedWith(404)
    ok.emit('data', '{"code":"ROOM_GONE"}')
    ok.emit('end')
    t.equal(ok.refusal()?.serverCode, 'ROOM_GONE', 'an application code')
  })

  t.test('read at most 4096 characters; an error or a close ends it too', async (t) => {
    const long = refusedWith(503)
    long.emit('data', 'x'.repeat(4095))
    t.equal(long.reads(), 0)
    long.emit('data', 'x')
    t.equal(long.reads(), 1, 'done without waiting for the end')
    long.emit('data', 'x')
    long.emit('end')
    t.equal(long.reads(), 1)
    for (const event of ['error', 'close']) {
      const cut = refusedWith(undefined)
      cut.emit(event)
      t.same({ ...cut.refusal(), reads: cut.reads() }, { status: 0, retryAfter: 0, serverCode: undefined, reads: 1 }, `${event}; no status is 0`)
    }
  })

  t.test("a browser's WebSocket has no `on`: nothing is watched", async (t) => {
    t.doesNotThrow(() => watchRefusal({}, () => t.fail('no refusal'), () => t.fail('no read')))
  })
})

t.test("a WebSocket that shows nothing (a browser's): a close before `connected` is a failed handshake", async (t) => {
  // What each attempt's error event carries: a browser's Event has no message (nor does anything else here).
  const events: unknown[] = [{ type: 'error' }, null, { message: 42 }]
  class Refused {
    readyState = 0
    onopen: unknown = null
    onmessage: unknown = null
    onclose: ((event: { code: number, reason: string }) => void) | null = null
    onerror: ((event: unknown) => void) | null = null
    constructor () {
      setTimeout(() => {
        this.readyState = 3
        this.onerror?.(events.shift())
        this.onclose?.({ code: 1006, reason: '' })
      }, 0)
    }

    send (): void {}
    close (): void {}
  }
  const errors: SocketError[] = []
  const socket = new Socket({ url: 'ws://127.0.0.1:1/ws', WebSocket: Refused, reconnect: { initialDelay: 1, maxDelay: 1, maxAttempts: 2 }, onError: (e) => errors.push(e) })
  await inState(socket, 'closed')
  const failed = ['FST_SOCKET_HANDSHAKE_FAILED', 'The connection could not be established (refused, or unreachable)', 1006, undefined]
  t.same(errors.map((e) => [e.code, e.message, e.closeCode, e.status]), [failed, failed, failed, ['FST_SOCKET_MAX_ATTEMPTS', 'Gave up after 2 reconnection attempts in a row (reconnect.maxAttempts)', undefined, undefined]])
})

t.test('SocketError carries what it knows', async (t) => {
  const plain = new SocketError('FST_SOCKET_X', 'x')
  t.same([plain.closeCode, plain.status, plain.serverCode, plain.channel], [undefined, undefined, undefined, undefined])
  const full = new SocketError('FST_SOCKET_UPGRADE_REFUSED', 'refused', undefined, { status: 401, serverCode: 'FST_SOCKET_TOKEN_EXPIRED', channel: 'news' })
  t.same([full.status, full.serverCode, full.channel], [401, 'FST_SOCKET_TOKEN_EXPIRED', 'news'])
  t.ok(full instanceof Error)
})

t.test('every FST_SOCKET_* code the client raises is in the error table of docs/client.md', async (t) => {
  const dir = new URL('../lib/client/', import.meta.url)
  const codes = new Set<string>()
  for (const file of await readdir(dir)) {
    for (const match of (await readFile(new URL(file, dir), 'utf8')).matchAll(/'(FST_SOCKET_[A-Z_]+)'/g)) codes.add(match[1] as string)
  }
  const docs = await readFile(new URL('../docs/client.md', import.meta.url), 'utf8')
  const table = docs.slice(docs.indexOf('## Errors'))
  t.ok(codes.size >= 15, `${codes.size} codes found`)
  for (const code of codes) t.ok(table.includes(`\`${code}\``), code)
})

/** A queue on a fake clock that records every drop. */
function queue (options: Partial<QueueOptions> = {}): { q: OutboundQueue, drops: Array<[string, DropReason, string | undefined]>, clock: { now: number } } {
  const clock = { now: 1000 }
  const drops: Array<[string, DropReason, string | undefined]> = []
  const q = new OutboundQueue({ ...DEFAULT_QUEUE, ...options }, (item, reason) => drops.push([item.data, reason, item.ref]), () => clock.now)
  return { q, drops, clock }
}

const data = (items: Array<{ data: string }>): string[] => items.map((i) => i.data)

t.test('OutboundQueue', async (t) => {
  t.test('the defaults', async (t) => {
    t.same({ ...DEFAULT_QUEUE }, { max: 1000, maxBytes: 1_048_576, ttl: 0, overflow: 'drop-oldest' })
  })

  t.test('first in, first out', async (t) => {
    const { q, drops } = queue()
    for (const d of ['a', 'b', 'c']) q.push(d)
    t.equal(q.length, 3)
    t.equal(q.bytes, 3)
    const items = q.drain()
    t.same(data(items), ['a', 'b', 'c'])
    t.same(items.map((i) => i.at), [1000, 1000, 1000], 'each item knows when it was queued')
    t.equal(q.length, 0)
    t.equal(q.bytes, 0)
    t.same(q.drain(), [], 'drained means empty')
    t.same(drops, [])
  })

  t.test('bounded by count: drop-oldest reports the oldest', async (t) => {
    const { q, drops } = queue({ max: 2 })
    q.push('a')
    q.push('b')
    q.push('c')
    t.same(drops, [['a', 'overflow', undefined]])
    t.same(data(q.drain()), ['b', 'c'])
  })

  t.test('bounded by UTF-8 bytes, not characters', async (t) => {
    const { q, drops } = queue({ maxBytes: 10 })
    q.push('ééé') // 6 bytes, 3 characters
    t.equal(q.bytes, 6)
    q.push('€') // 3 bytes: 9 in all
    t.equal(q.bytes, 9)
    t.same(drops, [])
    q.push('ab') // 11 bytes would not fit: the oldest goes
    t.same(drops, [['ééé', 'overflow', undefined]])
    t.equal(q.bytes, 5)
    q.push('123456789') // 14 bytes would not fit, nor 11: both older ones have to go
    t.same(drops.map((d) => d[0]), ['ééé', '€', 'ab'])
    t.same(data(q.drain()), ['123456789'])
  })

  t.test('drop-newest reports the new message and keeps the queue', async (t) => {
    const { q, drops } = queue({ max: 2, overflow: 'drop-newest' })
    q.push('a')
    q.push('b')
    q.push('c', 'r1')
    t.same(drops, [['c', 'overflow', 'r1']])
    t.same(data(q.drain()), ['a', 'b'])
  })

  t.test("'error' throws QueueFullError and drops nothing", async (t) => {
    const { q, drops } = queue({ max: 2, overflow: 'error' })
    q.push('a')
    q.push('b')
    const err = t.throws(() => q.push('c')) as QueueFullError
    t.ok(err instanceof QueueFullError)
    t.equal(err.code, 'FST_SOCKET_QUEUE_FULL')
    t.match(err.message, /2 messages/)
    t.same(drops, [])
    t.same(data(q.drain()), ['a', 'b'])
    const bytes = queue({ maxBytes: 4, overflow: 'error' })
    bytes.q.push('abc')
    t.throws(() => bytes.q.push('de'), { code: 'FST_SOCKET_QUEUE_FULL' }, 'by bytes too')
  })

  t.test('a message larger than maxBytes is reported too-large', async (t) => {
    for (const overflow of ['drop-oldest', 'drop-newest', 'error'] as const) {
      const { q, drops } = queue({ maxBytes: 4, overflow })
      q.push('ab')
      q.push('ééé') // 6 bytes: larger than the whole queue
      t.same(drops, [['ééé', 'too-large', undefined]], overflow)
      t.same(data(q.drain()), ['ab'], `${overflow}: the queue is untouched`)
    }
  })

  t.test('TTL: expired messages are reported, never sent', async (t) => {
    const { q, drops, clock } = queue({ ttl: 100 })
    q.push('a')
    clock.now += 60
    q.push('b')
    clock.now += 50 // a is 110 ms old, b 50
    t.same(data(q.drain()), ['b'], 'drain skips the expired')
    t.same(drops, [['a', 'expired', undefined]])

    q.push('c')
    clock.now += 100 // exactly the TTL: still fresh
    t.same(data(q.drain()), ['c'])

    q.push('d')
    clock.now += 101
    q.push('e') // expiry runs on push too
    t.same(drops.map((d) => d[0]), ['a', 'd'])
    t.equal(q.length, 1)
    t.same(data(q.drain()), ['e'])
  })

  t.test('expiry makes room before the overflow policy applies', async (t) => {
    const { q, drops, clock } = queue({ ttl: 10, max: 1, overflow: 'error' })
    q.push('a')
    clock.now += 11
    q.push('b')
    t.same(drops, [['a', 'expired', undefined]])
    t.same(data(q.drain()), ['b'])
  })

  t.test('ttl 0 never expires', async (t) => {
    const { q, drops, clock } = queue({ ttl: 0 })
    q.push('a')
    clock.now += 1e12
    t.same(data(q.drain()), ['a'])
    t.same(drops, [])
  })

  t.test('clear reports every message', async (t) => {
    const { q, drops, clock } = queue({ ttl: 100 })
    q.push('a', 'r1')
    clock.now += 200
    q.push('b')
    q.push('c', 'r2')
    q.clear('closed')
    t.same(drops, [['a', 'expired', 'r1'], ['b', 'closed', undefined], ['c', 'closed', 'r2']])
    t.equal(q.length, 0)
    t.equal(q.bytes, 0)
  })

  t.test('has(ref) tells whether a request still waits', async (t) => {
    const { q } = queue({ max: 2 })
    q.push('a', 'r1')
    q.push('b')
    t.ok(q.has('r1'))
    t.notOk(q.has('r2'))
    q.push('c', 'r2') // pushes r1 out
    t.notOk(q.has('r1'))
    t.ok(q.has('r2'))
    q.drain()
    t.notOk(q.has('r2'))
  })

  t.test('the default clock is Date.now', async (t) => {
    const q = new OutboundQueue(DEFAULT_QUEUE, () => {})
    const before = Date.now()
    q.push('a')
    const [item] = q.drain()
    t.ok(item !== undefined && item.at >= before && item.at <= Date.now())
  })
})

t.test('resolveUrl', async (t) => {
  t.equal(resolveUrl('ws://example.com/ws'), 'ws://example.com/ws')
  t.equal(resolveUrl('wss://example.com:8443/ws/chat?x=1'), 'wss://example.com:8443/ws/chat?x=1')
  t.equal(resolveUrl('WSS://example.com/ws'), 'WSS://example.com/ws', 'the scheme is case-insensitive')
  t.equal(resolveUrl('http://example.com/ws'), 'ws://example.com/ws')
  t.equal(resolveUrl('https://example.com/ws/notifications'), 'wss://example.com/ws/notifications')

  const http = { protocol: 'http:', host: 'localhost:3000' }
  const https = { protocol: 'https:', host: 'chat.example.com' }
  t.equal(resolveUrl('/ws/notifications', http), 'ws://localhost:3000/ws/notifications')
  t.equal(resolveUrl('/ws/notifications', https), 'wss://chat.example.com/ws/notifications')
  t.equal(resolveUrl('ws/chat/lobby', https), 'wss://chat.example.com/ws/chat/lobby', 'a relative path is taken from the root')
  t.equal(resolveUrl('ws://other.example.com/ws', https), 'ws://other.example.com/ws', 'a full URL ignores the page')

  // Node has no page (globalThis.location): a path cannot be resolved.
  const err = t.throws(() => resolveUrl('/ws/notifications')) as SocketError
  t.ok(err instanceof SocketError)
  t.equal(err.code, 'FST_SOCKET_BAD_URL')
  t.equal(err.name, 'SocketError')
  t.match(err.message, /\/ws\/notifications/)
  t.equal(err.closeCode, undefined)
})

t.test('Socket options are checked when it is made', async (t) => {
  /** A WebSocket class that never connects: enough for a Socket to be made and closed. */
  class Inert {
    readyState = 0
    onmessage: unknown = null
    onclose: unknown = null
    onerror: unknown = null
    send (): void {}
    close (): void {}
  }
  const base = { url: 'ws://127.0.0.1:1/ws', WebSocket: Inert }
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ url: '' }, /^options\.url must be a non-empty string \(got ""\)$/],
    [{ url: 7 }, /^options\.url must be a non-empty string \(got 7\)$/],
    [{ token: 42 }, /^options\.token must be a string or a function/],
    [{ tokenIn: 'header' }, /^options\.tokenIn must be one of 'protocol', 'query' \(got "header"\)$/],
    [{ debug: 'yes' }, /^options\.debug must be a boolean/],
    [{ onError: 'log' }, /^options\.onError must be a function/],
    [{ WebSocket: {} }, /^options\.WebSocket must be a function \(got object\)$/],
    [{ reconnect: true }, /^options\.reconnect must be false or an object \(got true\)$/],
    [{ reconnect: { initialDelay: -1 } }, /^options\.reconnect\.initialDelay must be a number ≥ 0 \(got -1\)$/],
    [{ reconnect: { factor: 0.5 } }, /^options\.reconnect\.factor must be a number ≥ 1/],
    [{ reconnect: { jitter: 2 } }, /^options\.reconnect\.jitter must be a number from 0 to 1 \(got 2\)$/],
    [{ reconnect: { maxDelay: Number.NaN } }, /^options\.reconnect\.maxDelay must be a number ≥ 0 \(got NaN\)$/],
    [{ reconnect: { maxAttempts: -1 } }, /^options\.reconnect\.maxAttempts must be an integer ≥ 0, or Infinity \(got -1\)$/],
    [{ reconnect: { maxAttempts: 2.5 } }, /^options\.reconnect\.maxAttempts must be an integer ≥ 0, or Infinity \(got 2\.5\)$/],
    [{ reconnect: { maxAttempts: '3' } }, /^options\.reconnect\.maxAttempts must be an integer ≥ 0, or Infinity \(got "3"\)$/],
    [{ reconnect: { maxAttempts: Number.NaN } }, /^options\.reconnect\.maxAttempts must be/],
    [{ reconnect: { maxAttempts: null } }, /^options\.reconnect\.maxAttempts must be an integer ≥ 0, or Infinity \(got null\)$/],
    [{ queue: { max: 1.5 } }, /^options\.queue\.max must be an integer ≥ 0 \(got 1\.5\)$/],
    [{ queue: { maxBytes: -1 } }, /^options\.queue\.maxBytes must be an integer ≥ 0/],
    [{ queue: { overflow: 'block' } }, /^options\.queue\.overflow must be one of 'drop-oldest', 'drop-newest', 'error'/],
    [{ heartbeat: { interval: 0 } }, /^options\.heartbeat\.interval must be a number > 0 \(got 0\)$/],
    [{ requestTimeout: '5s' }, /^options\.requestTimeout must be a number > 0 \(got "5s"\)$/],
    [{ connectTimeout: Infinity }, /^options\.connectTimeout must be a number > 0 \(got Infinity\)$/],
    [{ refreshBefore: -5 }, /^options\.refreshBefore must be a number ≥ 0/]
  ]
  for (const [change, message] of bad) {
    t.throws(() => new Socket({ ...base, ...change } as never), { name: 'SocketError', code: 'FST_SOCKET_INVALID_OPTIONS', message }, JSON.stringify(change))
  }
  t.throws(() => new Socket(null as never), { code: 'FST_SOCKET_INVALID_OPTIONS', message: 'The Socket options must be an object' })

  const good = new Socket({
    ...base,
    token: () => 'jwt',
    tokenIn: 'query',
    debug: false,
    logger: () => {},
    reconnect: { initialDelay: 0, maxDelay: 0, factor: 1, jitter: 0, resetAfter: 0, maxAttempts: 0 },
    queue: { max: 0, maxBytes: 0, ttl: 0, overflow: 'error' },
    heartbeat: false,
    requestTimeout: 1,
    connectTimeout: 1,
    refreshBefore: 0,
    onOpen: () => {},
    onStateChange: () => {}
  })
  t.equal(good.state, 'connecting', 'the edges of every range are allowed')
  good.close()
  const off = new Socket({ ...base, reconnect: false })
  off.close()
  t.equal(off.state, 'closed')
  const unlimited = new Socket({ ...base, reconnect: { maxAttempts: Infinity } })
  unlimited.close()
  t.equal(unlimited.state, 'closed', 'maxAttempts: Infinity is allowed (the default)')
})
