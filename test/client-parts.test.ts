// The parts the client's Socket is made of, one by one: error and close-code tables, request correlation, the
// emitter, the liveness timers, the token, and the close outcome. The Socket's own behaviour is in client*.test.ts.
import t, { type Test } from 'tap'
import { readFile } from 'node:fs/promises'
import { mock } from 'node:test'
import { CloseCode, closeAction, QueueFullError, SocketError, type Message, type SocketState } from '../lib/client/index.js'
import { closeOutcome } from '../lib/client/close-policy.js'
import { Emitter } from '../lib/client/emitter.js'
import { ClientErrorCode } from '../lib/client/errors.js'
import { Liveness } from '../lib/client/liveness.js'
import { Requests } from '../lib/client/requests.js'
import { Token } from '../lib/client/token.js'

/** A reporter that keeps what it is given. */
function recorder (): { report: (error: SocketError) => void, log: (line: string) => void, errors: SocketError[], lines: string[] } {
  const errors: SocketError[] = []
  const lines: string[] = []
  return { report: (error) => errors.push(error), log: (line) => lines.push(line), errors, lines }
}

/**
 * Runs the test on a fake clock (node:test's mock timers: setTimeout, setInterval and Date), so timers fire when the
 * test moves time, not when the machine gets round to it.
 */
function fakeClock (t: Test): { tick: (ms: number) => Promise<void> } {
  mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 })
  t.after(() => mock.timers.reset())
  return {
    // Moves time, then lets what the timers started (promises) run.
    tick: async (ms) => {
      mock.timers.tick(ms)
      await new Promise((resolve) => setImmediate(resolve))
    }
  }
}

/** An unsigned JWT whose `exp` is `seconds` from now (the client reads it without verifying). */
function jwt (seconds: number): string {
  const payload = Buffer.from(JSON.stringify({ sub: 'ann', exp: Date.now() / 1000 + seconds })).toString('base64url')
  return `eyJhbGciOiJIUzI1NiJ9.${payload}.sig`
}

t.test('ClientErrorCode: one frozen table, and exactly the client codes of docs/client.md', async (t) => {
  t.ok(Object.isFrozen(ClientErrorCode))
  for (const [name, code] of Object.entries(ClientErrorCode)) t.equal(code, `FST_SOCKET_${name}`, name)
  const docs = await readFile(new URL('../docs/client.md', import.meta.url), 'utf8')
  const table = docs.slice(docs.indexOf('## Errors'))
  const documented = [...table.matchAll(/^\| `(FST_SOCKET_[A-Z_]+)` \|/gm)].map((m) => m[1] as string)
  t.same([...documented].sort(), Object.values(ClientErrorCode).sort())
})

t.test('QueueFullError is a SocketError with its code', async (t) => {
  const err = new QueueFullError(2, 10)
  t.ok(err instanceof SocketError)
  t.ok(err instanceof QueueFullError)
  t.equal(err.code, ClientErrorCode.QUEUE_FULL)
  t.equal(err.message, 'The send queue is full (2 messages or 10 bytes)')
})

t.test('CloseCode: frozen, and exactly the codes of the close-code table in docs/protocol.md', async (t) => {
  t.ok(Object.isFrozen(CloseCode))
  const doc = await readFile(new URL('../docs/protocol.md', import.meta.url), 'utf8')
  const documented = doc.split('\n').flatMap((line) => /^\| ([0-9 /]+) \|/.exec(line)?.[1]?.split(' / ').map(Number) ?? [])
  t.same(Object.values(CloseCode).sort(), documented.sort())
  t.equal(closeAction(CloseCode.UNAUTHORIZED), 'refresh-token')
  t.equal(closeAction(CloseCode.SLOW_CONSUMER), 'reconnect')
})

t.test('closeOutcome', async (t) => {
  const seen = { greeted: false, refusal: null, failure: '' }
  const refused = closeOutcome(1006, '', { ...seen, refusal: { status: 503, retryAfter: 2000, serverCode: 'FST_SOCKET_SHUTTING_DOWN' } })
  t.match(refused, { action: 'reconnect-slowly', always: true, retryAfter: 2000, error: { code: ClientErrorCode.UPGRADE_REFUSED, status: 503, serverCode: 'FST_SOCKET_SHUTTING_DOWN' } })
  t.equal(refused.error.message, 'The server refused the upgrade with HTTP 503 (FST_SOCKET_SHUTTING_DOWN)')
  t.equal(closeOutcome(1006, '', { ...seen, refusal: { status: 404, retryAfter: 0, serverCode: undefined } }).error.message, 'The server refused the upgrade with HTTP 404')
  t.match(closeOutcome(1006, '', { ...seen, failure: 'connect ECONNREFUSED' }), { action: 'reconnect', always: true, retryAfter: 0, error: { code: ClientErrorCode.HANDSHAKE_FAILED, closeCode: 1006, message: /\(connect ECONNREFUSED\)/ } })
  t.match(closeOutcome(1006, 'handshake timeout', seen).error.message, /\(handshake timeout\)/)
  t.match(closeOutcome(1006, '', seen).error.message, /\(refused, or unreachable\)/)
  t.match(closeOutcome(1006, '', { ...seen, greeted: true }), { action: 'reconnect', always: false, error: { code: ClientErrorCode.CONNECTION_CLOSED, message: 'The server closed the connection (1006)' } })
  t.match(closeOutcome(CloseCode.STOP, 'bye', { ...seen, greeted: true }), { action: 'stop', always: false, error: { closeCode: 4000, message: 'The server closed the connection (4000: bye)' } })
})

t.test('Requests', async (t) => {
  t.test('refs are new every time; an answer settles its request once', async (t) => {
    const requests = new Requests()
    const [a, b] = [requests.ref(), requests.ref()]
    t.not(a, b)
    const answer = requests.expect(a, 'echo', undefined)
    t.ok(requests.has(a))
    t.notOk(requests.has(b))
    requests.settle(a, undefined, 42)
    requests.settle(a, new SocketError('FST_SOCKET_X', 'late'))
    t.equal(await answer, 42)
    t.notOk(requests.has(a))
  })

  t.test('an error rejects; a timeout rejects with FST_SOCKET_REQUEST_TIMEOUT and forgets the ref', async (t) => {
    const requests = new Requests()
    const refused = requests.expect('r1', 'echo', 1000)
    requests.settle('r1', new SocketError('FST_SOCKET_FORBIDDEN', 'no'))
    await t.rejects(refused, { code: 'FST_SOCKET_FORBIDDEN' })
    const slow = requests.expect('r2', 'echo', 5)
    await t.rejects(slow, { code: ClientErrorCode.REQUEST_TIMEOUT, message: 'No answer to "echo" within 5 ms' })
    t.notOk(requests.has('r2'))
  })

  t.test('rejectAll skips the refs still queued', async (t) => {
    const requests = new Requests()
    const sent = requests.expect('r1', 'echo', undefined)
    void requests.expect('r2', 'echo', undefined)
    requests.rejectAll(new SocketError(ClientErrorCode.CONNECTION_CLOSED, 'closed'), (ref) => ref === 'r2')
    await t.rejects(sent, { code: ClientErrorCode.CONNECTION_CLOSED })
    t.ok(requests.has('r2'), 'the queued one still waits')
  })
})

t.test('Emitter', async (t) => {
  t.test('a message goes to its cmd, then to "*", then to onMessage; off removes', async (t) => {
    const order: string[] = []
    const emitter = new Emitter({ onMessage: (m) => order.push(`onMessage ${m.cmd}`) })
    const note = (m: Message): void => { order.push(`note ${m.cmd}`) }
    emitter.on('*', (m) => order.push(`* ${m.cmd}`))
    emitter.on('note', note)
    emitter.emit({ channel: 'a', cmd: 'note', param: null })
    emitter.off('note', note)
    emitter.off('never-added', note)
    emitter.emit({ channel: 'a', cmd: 'note', param: null })
    t.same(order, ['note note', '* note', 'onMessage note', '* note', 'onMessage note'])
  })

  t.test('state listeners: the option first, then the added ones until removed', async (t) => {
    const changes: string[] = []
    const emitter = new Emitter({ onStateChange: (state, previous) => changes.push(`option ${previous}→${state}`) })
    const off = emitter.onState((state: SocketState) => changes.push(`added ${state}`))
    emitter.emitState('open', 'connecting')
    off()
    emitter.emitState('closed', 'open')
    t.same(changes, ['option connecting→open', 'added open', 'option open→closed'])
  })

  t.test('report goes to onError and, with debug, to the logger', async (t) => {
    const lines: string[] = []
    const errors: SocketError[] = []
    const quiet = new Emitter({ logger: (line) => lines.push(line), onError: (e) => errors.push(e) })
    quiet.report(new SocketError('FST_SOCKET_X', 'x'))
    t.same(lines, [], 'no lines without debug')
    new Emitter({ debug: true, logger: (line) => lines.push(line) }).report(new SocketError('FST_SOCKET_Y', 'y'))
    t.same(lines, ['[forge-socket] error FST_SOCKET_Y'])
    t.same(errors.map((e) => e.code), ['FST_SOCKET_X'])
  })
})

t.test('Liveness', async (t) => {
  /** A Liveness whose events are recorded. */
  function liveness (options: ConstructorParameters<typeof Liveness>[0]): { live: Liveness, events: string[] } {
    const events: string[] = []
    const live = new Liveness(options, {
      ping: () => events.push('ping'),
      silent: (ms) => events.push(`silent ${ms >= 400 ? '≥ interval + timeout' : ms}`),
      stable: () => events.push('stable')
    })
    t.after(() => live.stop())
    return { live, events }
  }

  t.test('pings after interval of silence, gives up after interval + timeout', async (t) => {
    const clock = fakeClock(t)
    const { live, events } = liveness({ heartbeat: { interval: 100, timeout: 300 }, reconnect: { resetAfter: 10_000 } })
    live.heard()
    live.up()
    await clock.tick(99)
    t.same(events, [], 'quiet before interval')
    await clock.tick(101)
    t.same(events, ['ping', 'ping', 'ping'], 'past interval: a ping at each check (every 50 ms)')
    await clock.tick(200)
    t.equal(events.at(-1), 'silent ≥ interval + timeout')
    live.stop()
    const count = events.length
    await clock.tick(1000)
    t.equal(events.length, count, 'nothing after stop()')
  })

  t.test('traffic keeps it quiet', async (t) => {
    const clock = fakeClock(t)
    const { live, events } = liveness({ heartbeat: { interval: 100, timeout: 100 } })
    live.heard()
    live.up()
    for (let i = 0; i < 8; i++) {
      await clock.tick(90)
      live.heard()
    }
    t.same(events, [])
  })

  t.test('stable after resetAfter; no heartbeat when it is off', async (t) => {
    const clock = fakeClock(t)
    const { live, events } = liveness({ heartbeat: false, reconnect: { resetAfter: 10 } })
    live.up()
    await clock.tick(9)
    t.same(events, [])
    await clock.tick(1)
    t.same(events, ['stable'])
    await clock.tick(1000)
    t.same(events, ['stable'], 'once')
  })

  t.test('the handshake timer: its timeout with connectTimeout, unless settled or stopped', async (t) => {
    const clock = fakeClock(t)
    const { live } = liveness({ connectTimeout: 10 })
    const timeouts: number[] = []
    live.connecting((ms) => timeouts.push(ms))
    await clock.tick(10)
    live.connecting((ms) => timeouts.push(-ms))
    live.settled()
    live.connecting((ms) => timeouts.push(-ms))
    live.stop()
    await clock.tick(1000)
    t.same(timeouts, [10])
  })
})

t.test('Token', async (t) => {
  t.test('a string token comes at once; a provider is asked each time, through a promise', async (t) => {
    const out = recorder()
    t.equal(new Token({ token: 'abc' }, out, async () => {}).fetch(), 'abc')
    t.equal(new Token({}, out, async () => {}).fetch(), undefined)
    let calls = 0
    const provided = new Token({ token: () => `t${++calls}` }, out, async () => {})
    const first = provided.fetch()
    t.ok(first instanceof Promise)
    t.equal(await first, 't1')
    t.equal(await provided.fetch(), 't2')
    await t.rejects(new Token({ token: () => { throw new Error('down') } }, out, async () => {}).fetch() as Promise<string>, { message: 'down' })
  })

  t.test('one fresh token per stable connection, with a provider only', async (t) => {
    const out = recorder()
    t.notOk(new Token({ token: 'abc' }, out, async () => {}).renewable)
    const token = new Token({ token: () => 'x' }, out, async () => {})
    t.ok(token.renewable)
    token.renewing()
    t.notOk(token.renewable)
    token.stable()
    t.ok(token.renewable)
  })

  t.test('refreshed in band at half-life when that is sooner than refreshBefore, then scheduled again', async (t) => {
    const clock = fakeClock(t)
    const out = recorder()
    const sent: string[] = []
    // Each lives 100 ms from now, then one of an hour.
    const tokens = [jwt(0.1), jwt(0.1), jwt(3600)]
    const token = new Token({ token: () => tokens.shift() as string }, out, async (fresh) => { sent.push(fresh) })
    t.after(() => token.stop())
    await token.fetch()
    token.schedule()
    await clock.tick(49)
    t.equal(sent.length, 0, 'not before half-life (refreshBefore, 30 s, is longer than the token)')
    await clock.tick(1)
    t.equal(sent.length, 1, 'at half-life')
    await clock.tick(25)
    t.equal(sent.length, 2, 'and the fresh token (50 ms left) at its half-life')
    t.same(out.lines, ['token refreshed', 'token refreshed'])
    t.equal(tokens.length, 0)
  })

  t.test('no refresh for a string token, a token that is not a JWT, or one without exp', async (t) => {
    const out = recorder()
    const sent: string[] = []
    const noExp = `e30.${Buffer.from('{}').toString('base64url')}.sig`
    const sources = [jwt(0.01), () => 'opaque', () => 'a.%%%.b', () => noExp]
    const clock = fakeClock(t)
    for (const source of sources) {
      const token = new Token({ token: source }, out, async (fresh) => { sent.push(fresh) })
      await token.fetch()
      token.schedule()
    }
    await clock.tick(60_000)
    t.same(sent, [])
  })

  t.test('a failed refresh is reported: the provider as FST_SOCKET_TOKEN_PROVIDER, the server as it answered', async (t) => {
    const clock = fakeClock(t)
    const out = recorder()
    let calls = 0
    const failing = new Token({ token: () => { if (++calls > 1) throw new Error('no session'); return jwt(0.02) } }, out, async () => {})
    await failing.fetch()
    failing.schedule()
    const refused = new Token({ token: () => jwt(0.02) }, out, async () => { throw new SocketError('FST_SOCKET_UNAUTHORIZED', 'no') })
    await refused.fetch()
    refused.schedule()
    await clock.tick(10)
    t.same(out.errors.map((e) => [e.code, e.message]), [
      [ClientErrorCode.TOKEN_PROVIDER, 'The token provider failed: no session'],
      ['FST_SOCKET_UNAUTHORIZED', 'no']
    ])
  })

  t.test('stop() cancels a scheduled refresh', async (t) => {
    const clock = fakeClock(t)
    const out = recorder()
    const sent: string[] = []
    const token = new Token({ token: () => jwt(0.02) }, out, async (fresh) => { sent.push(fresh) })
    await token.fetch()
    token.schedule()
    token.stop()
    await clock.tick(60_000)
    t.same(sent, [])
  })
})
