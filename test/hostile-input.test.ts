// Hardening items 6 and 11: whatever a client sends, it gets one coded answer, the connection stays, the process
// keeps running and no prototype is polluted; a command handler that fails answers that client alone.
import t from 'tap'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import Fastify from 'fastify'
import type WebSocket from 'ws'
import forgeSocket, { type OutboundMessage } from '../plugin.js'
import { listen, room, serve, sign, connect, SECRET } from './helpers/server.js'
import { LogSink } from './helpers/logs.js'

const HOME = 'room-a'
/** The default `maxDepth`. */
const MAX_DEPTH = 32
const FORBIDDEN = ['__proto__', 'constructor', 'prototype'] as const
const CODE = /^FST_SOCKET_[A-Z_]+$/

/** Unhandled rejections seen while this file runs: there must be none. */
const unhandled: unknown[] = []
const onUnhandled = (reason: unknown): void => { unhandled.push(reason) }
process.on('unhandledRejection', onUnhandled)
t.teardown(() => { process.removeListener('unhandledRejection', onUnhandled) })

/**
 * A naive recursive merge, the classic pollution gadget: if a `__proto__` (or `constructor.prototype`) key ever
 * reached a handler that does this, `Object.prototype` would get the payload's keys.
 */
function naiveMerge (target: Record<string, unknown>, source: unknown): Record<string, unknown> {
  if (typeof source !== 'object' || source === null || Array.isArray(source)) return target
  for (const key of Object.keys(source)) {
    const value = (source as Record<string, unknown>)[key]
    if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
      const next = target[key]
      target[key] = naiveMerge((typeof next === 'object' && next !== null ? next : {}) as Record<string, unknown>, value)
    } else {
      target[key] = value
    }
  }
  return target
}

/** The spec for what must be refused: a forbidden key anywhere, or an object/array nested deeper than maxDepth (the envelope is level 0). */
function mustBeRefused (text: string): boolean {
  let root: unknown
  try { root = JSON.parse(text) } catch { return false }
  const stack: Array<[unknown, number]> = [[root, 0]]
  while (stack.length > 0) {
    const [value, depth] = stack.pop() as [unknown, number]
    if (typeof value !== 'object' || value === null) continue
    if (depth > MAX_DEPTH) return true
    for (const key of Object.keys(value)) {
      if (!Array.isArray(value) && (FORBIDDEN as readonly string[]).includes(key)) return true
      stack.push([(value as Record<string, unknown>)[key], depth + 1])
    }
  }
  return false
}

/**
 * Reads every answer of one connection: answers that carry one of the test's refs are filed under it, all others
 * (frames whose ref was missing or unusable) are "loose". A wait for an answer fails if the connection closes.
 */
class Answers {
  readonly byRef = new Map<string, OutboundMessage[]>()
  readonly loose: OutboundMessage[] = []
  readonly tracked = new Set<string>()
  #waiters = new Map<string, () => void>()
  #closed: Promise<never>
  #counter = 0

  constructor (ws: WebSocket) {
    ws.on('message', (data) => {
      const message = JSON.parse(data.toString()) as OutboundMessage
      if (message.cmd === 'connected') return
      if (message.ref !== undefined && this.tracked.has(message.ref)) {
        const list = this.byRef.get(message.ref) ?? []
        list.push(message)
        this.byRef.set(message.ref, list)
        this.#waiters.get(message.ref)?.()
      } else {
        this.loose.push(message)
      }
    })
    this.#closed = new Promise((_resolve, reject) => {
      ws.once('close', (code, reason) => reject(new Error(`the connection closed: ${code} ${reason.toString()}`)))
    })
    this.#closed.catch(() => {})
  }

  /** A fresh ref the answers are filed under. */
  ref (): string {
    const ref = `hostile-${++this.#counter}`
    this.tracked.add(ref)
    return ref
  }

  /** Resolves with the first answer for `ref`. */
  async answer (ref: string): Promise<OutboundMessage> {
    const known = this.byRef.get(ref)?.[0]
    if (known !== undefined) return known
    const arrived = new Promise<void>((resolve) => this.#waiters.set(ref, resolve))
    await Promise.race([arrived, this.#closed])
    this.#waiters.delete(ref)
    return this.byRef.get(ref)?.[0] as OutboundMessage
  }
}

/** An answer a client may get: `reply`, `pong`, or `error` with an FST_SOCKET_* code. */
function assertCoded (answer: OutboundMessage, what: string): void {
  assert.ok(['reply', 'pong', 'error'].includes(answer.cmd), `${what}: answered with ${answer.cmd}`)
  if (answer.cmd === 'error') assert.match((answer.param as { code: string }).code, CODE, `${what}: a coded error`)
}

// ---------------------------------------------------------------------------------------------------------------
// Arbitraries. Frames are data (so fast-check can print and shrink them); each is rendered with a fresh ref.

/** An object key as it appears in the JSON text: sometimes with its first character \u-escaped. */
const keyText = (key: string, escaped: boolean): string =>
  escaped ? `"\\u${key.charCodeAt(0).toString(16).padStart(4, '0')}${JSON.stringify(key).slice(2)}` : JSON.stringify(key)

const wrappers = (min: number, max: number): fc.Arbitrary<Array<'array' | 'object'>> =>
  fc.array(fc.constantFrom('array' as const, 'object' as const), { minLength: min, maxLength: max })

/** Wraps JSON text in arrays and objects, innermost first. */
function wrap (inner: string, levels: Array<'array' | 'object'>): string {
  let text = inner
  levels.forEach((kind, i) => { text = kind === 'array' ? (i % 2 === 0 ? `[${text}]` : `[0,${text},null]`) : `{"k${i}":${text}}` })
  return text
}

const channelArb = fc.oneof(
  fc.constantFrom(HOME, 'extra-1', 'extra.two', 'a*', '', 'a..b', 'room-a\u0000', 'rооm-a', 'c'.repeat(256)),
  fc.string({ maxLength: 40 }),
  fc.jsonValue({ maxDepth: 2 })
)
const cmdArb = fc.oneof(
  { arbitrary: fc.constantFrom('echo', 'ping', 'subscribe', 'unsubscribe', 'nope', '', 'c'.repeat(129)), weight: 4 },
  { arbitrary: fc.string({ maxLength: 20 }), weight: 1 },
  { arbitrary: fc.jsonValue({ maxDepth: 2 }), weight: 1 }
)

type Frame =
  /** An envelope-shaped object (possibly of the wrong shape) with the test's ref: answered with that ref. */
  | { kind: 'envelope', channel: unknown, cmd: unknown, param: unknown, hasParam: boolean, extra: Record<string, unknown> }
  /** A forbidden key spliced into the envelope as raw text: always FST_SOCKET_BAD_REQUEST with the ref. */
  | { kind: 'poison', key: string, escaped: boolean, payload: string, levels: Array<'array' | 'object'>, atTop: boolean }
  /** Anything else: not an object, not JSON, a ref that can't be used. Answered with an error, without our ref. */
  | { kind: 'raw', text: string }

const envelopeArb: fc.Arbitrary<Frame> = fc.record({
  kind: fc.constant('envelope' as const),
  channel: channelArb,
  cmd: cmdArb,
  param: fc.jsonValue(),
  hasParam: fc.boolean(),
  extra: fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 })
}).filter((f) => f.cmd !== 'auth.refresh' && !(f.cmd === 'unsubscribe' && f.channel === HOME))

/** Well-formed echoes on the home channel: answered with the param, unless it holds a forbidden key. */
const echoArb: fc.Arbitrary<Frame> = fc.record({
  kind: fc.constant('envelope' as const),
  channel: fc.constant(HOME),
  cmd: fc.constant('echo'),
  param: fc.jsonValue(),
  hasParam: fc.boolean(),
  extra: fc.constant({})
})

const poisonArb: fc.Arbitrary<Frame> = fc.record({
  kind: fc.constant('poison' as const),
  key: fc.constantFrom(...FORBIDDEN),
  escaped: fc.boolean(),
  payload: fc.oneof(
    fc.constant('{"polluted":1}'),
    fc.constant('{"prototype":{"polluted":1}}'),
    fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v))
  ),
  levels: wrappers(0, 40),
  atTop: fc.boolean()
})

const rawArb: fc.Arbitrary<Frame> = fc.oneof(
  fc.jsonValue().map((v) => JSON.stringify(v)),
  fc.string({ maxLength: 200 }),
  fc.string({ unit: 'binary', maxLength: 50 }),
  fc.constantFrom('', ' ', '{', '{"channel":', 'null', '[]', '{}', '"ping"', '1e999', '{"channel":"room-a","cmd":"ping"}}'),
  // Envelopes whose ref is unusable, so the error can't carry it.
  fc.record({ ref: fc.oneof(fc.constant(''), fc.constant('r'.repeat(65)), fc.integer(), fc.constant(null), fc.jsonValue({ maxDepth: 1 }).filter((v) => typeof v !== 'string')) })
    .map(({ ref }) => JSON.stringify({ channel: HOME, cmd: 'echo', param: 1, ref }))
).map((text) => ({ kind: 'raw' as const, text }))

const frameArb: fc.Arbitrary<Frame> = fc.oneof(
  { arbitrary: envelopeArb, weight: 4 },
  { arbitrary: echoArb, weight: 2 },
  { arbitrary: poisonArb, weight: 3 },
  { arbitrary: rawArb, weight: 2 }
)

/** The frame's text, for the given ref. */
function render (frame: Frame, ref: string): string {
  switch (frame.kind) {
    case 'envelope': {
      const message: Record<string, unknown> = { ...frame.extra, channel: frame.channel, cmd: frame.cmd, ref }
      if (frame.hasParam) message.param = frame.param
      else delete message.param
      return JSON.stringify(message)
    }
    case 'poison': {
      const poison = `${keyText(frame.key, frame.escaped)}:${frame.payload}`
      if (frame.atTop) return `{${poison},"channel":${JSON.stringify(HOME)},"cmd":"echo","param":${wrap('1', frame.levels)},"ref":${JSON.stringify(ref)}}`
      return `{"channel":${JSON.stringify(HOME)},"cmd":"echo","param":${wrap(`{"a":1,${poison}}`, frame.levels)},"ref":${JSON.stringify(ref)}}`
    }
    case 'raw':
      return frame.text
  }
}

t.test('random hostile frames: one coded answer each, the connection stays, nothing is polluted', async (t) => {
  const handled = new Set<string>()
  const { app, base } = await serve(t, {
    rateLimit: { perSecond: 100000, burst: 100000 },
    badFrames: { max: 100000, window: 1000 },
    authorizeChannel: () => true
  }, (app) => {
    app.socket.command('echo', {
      handler: (param, { ref }) => {
        if (ref !== undefined) handled.add(ref)
        naiveMerge({}, param)
        return param
      }
    })
  })
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  t.after(() => client.close())
  const answers = new Answers(client.ws)
  const protoKeys = Object.getOwnPropertyNames(Object.prototype).sort()
  const arrayProtoKeys = Object.getOwnPropertyNames(Array.prototype).sort()
  const counts = { tracked: 0, loose: 0, refused: 0, echoed: 0, pings: 0 }

  /** Sends a batch of frames, then a ping; checks every answer. */
  async function exchange (frames: Frame[]): Promise<void> {
    const looseBefore = answers.loose.length
    const sent: Array<{ frame: Frame, ref: string | null, text: string }> = []
    for (const frame of frames) {
      const ref = frame.kind === 'raw' ? null : answers.ref()
      const text = render(frame, ref ?? '')
      fc.pre(Buffer.byteLength(text) < 60000)
      sent.push({ frame, ref, text })
    }
    const sentinel = answers.ref()
    counts.pings++
    for (const { text } of sent) client.send(text)
    client.send({ channel: HOME, cmd: 'ping', ref: sentinel })
    assert.deepEqual(await answers.answer(sentinel), { channel: HOME, cmd: 'pong', param: null, ref: sentinel })
    // Frames without a usable ref are refused while they are decoded, so their errors came before the pong.
    const untracked = sent.filter((s) => s.ref === null).length
    const loose = answers.loose.slice(looseBefore)
    assert.equal(loose.length, untracked, 'one error for each frame without a usable ref')
    for (const answer of loose) {
      assert.equal(answer.cmd, 'error')
      assert.match((answer.param as { code: string }).code, CODE)
    }
    counts.loose += untracked
    for (const { frame, ref, text } of sent) {
      if (ref === null) continue
      const answer = await answers.answer(ref)
      counts.tracked++
      assertCoded(answer, text.slice(0, 200))
      if (frame.kind === 'poison' || mustBeRefused(text)) {
        assert.equal(answer.cmd, 'error', `refused: ${text.slice(0, 200)}`)
        assert.equal((answer.param as { code: string }).code, 'FST_SOCKET_BAD_REQUEST')
        assert.equal(handled.has(ref), false, 'the handler never saw a refused param')
        counts.refused++
      } else if (frame.kind === 'envelope' && frame.channel === HOME && frame.cmd === 'echo') {
        const expected = (JSON.parse(text) as { param?: unknown }).param ?? null
        assert.deepEqual(answer, { channel: HOME, cmd: 'reply', param: expected, ref }, 'echo replies with the param')
        counts.echoed++
      }
    }
    assert.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype is not polluted')
  }

  await fc.assert(fc.asyncProperty(fc.array(frameArb, { minLength: 1, maxLength: 4 }), exchange), { numRuns: 200 })

  // A last round trip: every answer is in, and no ref got a second one.
  const last = answers.ref()
  client.send({ channel: HOME, cmd: 'ping', ref: last })
  await answers.answer(last)
  const extra = [...answers.byRef].filter(([, list]) => list.length !== 1).map(([ref]) => ref)
  t.strictSame(extra, [], 'every frame with a ref got exactly one answer')
  t.equal(answers.byRef.size, counts.tracked + counts.pings + 1, 'an answer for each tracked frame and each ping')
  t.equal(answers.loose.length, counts.loose, 'one error for each frame without a usable ref')
  t.ok(counts.refused > 50, `forbidden keys and deep nesting were refused (${counts.refused})`)
  t.ok(counts.echoed > 10, `well-formed echoes were answered (${counts.echoed})`)
  t.equal(client.ws.readyState, client.ws.OPEN, 'the connection is still open')
  t.equal(app.socket.status().connections, 1, 'and the server still has it')
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'no object inherits "polluted"')
  t.strictSame(Object.getOwnPropertyNames(Object.prototype).sort(), protoKeys, 'Object.prototype has no new keys')
  t.strictSame(Object.getOwnPropertyNames(Array.prototype).sort(), arrayProtoKeys, 'Array.prototype has no new keys')
  t.strictSame(unhandled, [], 'no unhandled rejection')
})

t.test(`random nesting: deeper than maxDepth (${MAX_DEPTH}) is FST_SOCKET_BAD_REQUEST, up to it is echoed`, async (t) => {
  const handled: string[] = []
  const { base } = await serve(t, {
    rateLimit: { perSecond: 100000, burst: 100000 },
    badFrames: { max: 100000, window: 1000 }
  }, (app) => {
    app.socket.command('echo', { handler: (param, { ref }) => { handled.push(ref ?? ''); return param } })
  })
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  t.after(() => client.close())
  const answers = new Answers(client.ws)
  const seen = { deep: 0, ok: 0 }

  const nesting = fc.record({
    // Biased around the limit, and up to 5,000 levels (at most about 55 KB of text, still under maxPayload).
    depth: fc.oneof(fc.integer({ min: 1, max: MAX_DEPTH + 4 }), fc.integer({ min: MAX_DEPTH + 1, max: 5000 })),
    kinds: fc.array(fc.constantFrom('array' as const, 'object' as const), { minLength: 1, maxLength: 8 }),
    leaf: fc.oneof(fc.constant(null), fc.integer(), fc.string({ maxLength: 8 }), fc.boolean())
  })
  await fc.assert(fc.asyncProperty(nesting, async ({ depth, kinds, leaf }) => {
    const levels = Array.from({ length: depth }, (_, i) => kinds[i % kinds.length] as 'array' | 'object')
    const param = wrap(JSON.stringify(leaf), levels)
    const ref = answers.ref()
    client.send(`{"channel":"${HOME}","cmd":"echo","param":${param},"ref":"${ref}"}`)
    const answer = await answers.answer(ref)
    if (depth > MAX_DEPTH) {
      assert.deepEqual(answer, {
        channel: HOME, cmd: 'error', param: { code: 'FST_SOCKET_BAD_REQUEST', message: `Bad request: nesting deeper than ${MAX_DEPTH} levels` }, ref
      })
      assert.equal(handled.includes(ref), false, 'the handler never saw it')
      seen.deep++
    } else {
      assert.deepEqual(answer, { channel: HOME, cmd: 'reply', param: JSON.parse(param), ref })
      seen.ok++
    }
  }), { numRuns: 100 })

  t.ok(seen.deep > 20, `deep params refused (${seen.deep})`)
  t.ok(seen.ok > 20, `params within the limit echoed (${seen.ok})`)
  t.strictSame(answers.loose, [], 'nothing unasked for arrived')
  t.equal(client.ws.readyState, client.ws.OPEN, 'the connection is still open')
  t.strictSame(unhandled, [], 'no unhandled rejection')
})

t.test('a command handler that throws or rejects answers that client alone', async (t) => {
  const sink = new LogSink()
  const app = Fastify({ logger: { level: 'error', stream: sink.stream } })
  // Presence at once: gathered, ann's join would reach bob too, who connected within the same round.
  await app.register(forgeSocket, { jwt: { secret: SECRET }, presence: { interval: 0 } })
  room(app)
  const secret = 'internal detail: db password hunter2'
  app.socket.command('throws', { handler: () => { throw new Error(secret) } })
  app.socket.command('rejects', { handler: async () => { await Promise.resolve(); throw new Error(secret) } })
  app.socket.command('returns-rejected', { handler: () => Promise.reject(new Error(secret)) })
  app.socket.command('throws-string', { handler: () => { throw secret as unknown as Error } })
  app.socket.command('throws-null', { handler: () => { throw null as unknown as Error } })
  app.socket.command('rejects-object', { handler: () => Promise.reject({ code: 'APP_X', statusCode: 400, message: secret }) })
  app.socket.command('echo', { handler: (param) => param })
  t.after(() => app.close())
  const base = await listen(app)
  const { client: ann } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  const { client: bob } = await connect(`${base}/ws/a`, sign({ sub: 'bob' }))
  t.after(() => { ann.close(); bob.close() })
  await ann.next('user-joined')

  const failing = ['throws', 'rejects', 'returns-rejected', 'throws-string', 'throws-null', 'rejects-object']
  for (const [i, cmd] of failing.entries()) {
    const ref = `f${i}`
    const answer = await ann.request(HOME, cmd, { n: i }, ref)
    t.strictSame(answer, {
      channel: HOME, cmd: 'error', param: { code: 'FST_SOCKET_HANDLER_FAILED', message: 'The command handler failed' }, ref
    }, `${cmd}: FST_SOCKET_HANDLER_FAILED to the sender`)
    t.notMatch(JSON.stringify(answer), /hunter2|internal/, `${cmd}: nothing internal leaks`)
    // Bob, in the same channel, keeps receiving broadcasts between the failures.
    app.socket.broadcast(HOME, { cmd: 'tick', param: i })
    t.match(await bob.next('tick'), { channel: HOME, cmd: 'tick', param: i }, `${cmd}: the other client still receives broadcasts`)
    t.match(await ann.next('tick'), { cmd: 'tick', param: i }, `${cmd}: the sender still receives them too`)
  }
  ann.send({ channel: HOME, cmd: 'throws' })
  t.strictSame(await ann.next('error'), {
    channel: HOME, cmd: 'error', param: { code: 'FST_SOCKET_HANDLER_FAILED', message: 'The command handler failed' }
  }, 'a failure without a ref is still answered')

  t.strictSame(await ann.request(HOME, 'echo', 'still here', 'e1'), { channel: HOME, cmd: 'reply', param: 'still here', ref: 'e1' }, 'the failing client keeps working')
  t.strictSame(await bob.request(HOME, 'echo', 'fine', 'e2'), { channel: HOME, cmd: 'reply', param: 'fine', ref: 'e2' }, 'the other client keeps working')
  t.strictSame(bob.messages, [], 'the other client got no error and nothing else')
  t.strictSame(ann.messages, [], 'the failing client got one answer per message')
  t.equal(app.socket.status().connections, 2)
  const logged = sink.lines.filter((l) => l.msg === 'command handler failed')
  t.equal(logged.length, failing.length + 1, 'each failure is logged for the operator')
  t.strictSame(unhandled, [], 'no unhandled rejection')
})

t.test('a connection whose set-up fails gets 1011; the others are untouched', async (t) => {
  const { app, base } = await serve(t, {}, (app) => {
    app.socket.onOpen((conn) => { if (conn.profileId === 'broken') throw new Error('state lost') })
  })
  const { client: bob } = await connect(`${base}/ws/a`, sign({ sub: 'bob' }))
  t.after(() => bob.close())
  const { client: broken } = await connect(`${base}/ws/a`, sign({ sub: 'broken' }))
  t.strictSame(await broken.closed, { code: 1011, reason: 'internal error' }, 'the broken connection is closed with 1011')
  app.socket.broadcast(HOME, { cmd: 'tick', param: 1 })
  t.match(await bob.next('tick'), { channel: HOME, cmd: 'tick', param: 1 }, 'the other client still receives broadcasts')
  t.equal(app.socket.status().connections, 1)
  t.strictSame(unhandled, [], 'no unhandled rejection')
})
