import t, { type Test } from 'tap'
import { once } from 'node:events'
import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance } from 'fastify'
import createError from '@fastify/error'
import Type from 'typebox'
import type { WebSocket } from 'ws'
import forgeSocket, { RESERVED_COMMANDS, forbidden, badRequest, type ActOptions, type ForgeSocketOptions, type CommandContext, type OutboundMessage } from '../plugin.js'
import { build, closes, idOf, listen, room, serve, sign, connect, Client, SECRET } from './helpers/server.js'

const TOKEN = sign({ sub: 'ann' })
const HOME = 'room-a'

/** A listening app with the test route and one connected client in `room-a`. */
async function start (
  t: Test,
  options: ForgeSocketOptions = {},
  setup?: (app: FastifyInstance) => void,
  actOptions: ActOptions = {}
): Promise<{ app: FastifyInstance, client: Client, base: string, connected: OutboundMessage }> {
  const { app, base } = await serve(t, options, (app) => {
    room(app, actOptions)
    setup?.(app)
  })
  const { client, connected } = await connect(`${base}/ws/a`, TOKEN)
  return { app, client, base, connected }
}

/** Proves the connection is still open and answering: a ping gets its pong, and nothing else is waiting. */
async function alive (t: Test, client: Client, channel = HOME): Promise<void> {
  const ref = `alive-${Math.random().toString(36).slice(2)}`
  const pong = await client.request(channel, 'ping', null, ref)
  t.strictSame(pong, { channel, cmd: 'pong', param: null, ref }, 'the connection is still open')
  t.strictSame(client.messages, [], 'no other message arrived')
}

function error (code: string, message: string, ref?: string, channel = HOME): OutboundMessage {
  return { channel, cmd: 'error', param: { code, message }, ...(ref !== undefined ? { ref } : {}) }
}

/** `depth` nested arrays around `inner`: `[[[inner]]]` is depth 3. */
function nestedArrays (depth: number, inner: unknown = 1): unknown {
  let value = inner
  for (let i = 0; i < depth; i++) value = [value]
  return value
}

/** `depth` nested objects: `{ a: { a: { a: 1 } } }` is depth 3. */
function nestedObjects (depth: number): unknown {
  let value: unknown = 1
  for (let i = 0; i < depth; i++) value = { a: value }
  return value
}

t.test('the first message is `connected` with the connection id and its channels', async (t) => {
  const { app, base } = await serve(t)
  const client = new Client(`${base}/ws/first`, { headers: { authorization: `Bearer ${TOKEN}` } })
  const [first] = await once(client.ws, 'message') as [Buffer]
  const connected = JSON.parse(first.toString()) as OutboundMessage
  t.strictSame(connected, {
    channel: 'room-first',
    cmd: 'connected',
    param: { connectionId: app.socket.connections()[0]?.id, channels: ['room-first'], dedupe: { window: 120000, scope: 'user' } }
  })
  t.type((connected.param as { connectionId: unknown }).connectionId, 'string')
  await client.next('connected')
  await alive(t, client, 'room-first')
})

t.test('malformed frames get FST_SOCKET_BAD_REQUEST and the connection stays open', async (t) => {
  const { client } = await start(t)
  const cases: Array<[string, string, string]> = [
    ['malformed JSON', '{"channel":', 'the frame is not valid JSON'],
    ['empty frame', '', 'the frame is not valid JSON'],
    ['null', 'null', 'a message must be a JSON object'],
    ['array', '[{"channel":"room-a","cmd":"ping"}]', 'a message must be a JSON object'],
    ['string', '"ping"', 'a message must be a JSON object'],
    ['number', '42', 'a message must be a JSON object'],
    ['boolean', 'true', 'a message must be a JSON object'],
    ['empty object', '{}', 'message must have required properties channel, cmd'],
    ['missing cmd', JSON.stringify({ channel: HOME, param: 1 }), 'message must have required properties cmd'],
    ['missing channel', JSON.stringify({ cmd: 'ping' }), 'message must have required properties channel'],
    ['non-string channel', JSON.stringify({ channel: 1, cmd: 'ping' }), '/channel must be string'],
    ['null channel', JSON.stringify({ channel: null, cmd: 'ping' }), '/channel must be string'],
    ['channel too long', JSON.stringify({ channel: 'c'.repeat(256), cmd: 'ping' }), '/channel must not have more than 255 characters'],
    ['non-string cmd', JSON.stringify({ channel: HOME, cmd: 7 }), '/cmd must be string'],
    ['empty cmd', JSON.stringify({ channel: HOME, cmd: '' }), '/cmd must not have fewer than 1 characters'],
    ['cmd too long', JSON.stringify({ channel: HOME, cmd: 'c'.repeat(129) }), '/cmd must not have more than 128 characters'],
    ['numeric ref', JSON.stringify({ channel: HOME, cmd: 'ping', ref: 1 }), '/ref must be string'],
    ['object ref', JSON.stringify({ channel: HOME, cmd: 'ping', ref: { id: 1 } }), '/ref must be string'],
    ['empty ref', JSON.stringify({ channel: HOME, cmd: 'ping', ref: '' }), '/ref must not have fewer than 1 characters'],
    ['ref too long', JSON.stringify({ channel: HOME, cmd: 'ping', ref: 'r'.repeat(65) }), '/ref must not have more than 64 characters']
  ]
  for (const [name, frame, message] of cases) {
    client.send(frame)
    t.strictSame(await client.next('error'), error('FST_SOCKET_BAD_REQUEST', `Bad request: ${message}`), name)
    await alive(t, client)
  }
})

t.test('a bad message with a well-formed ref gets its error with that ref', async (t) => {
  const { client } = await start(t)
  client.send({ channel: HOME, param: 1, ref: 'r1' })
  t.strictSame(await client.next('error'), error('FST_SOCKET_BAD_REQUEST', 'Bad request: message must have required properties cmd', 'r1'))
  client.send({ channel: HOME, cmd: 'x', param: { constructor: 1 }, ref: 'r2' })
  t.strictSame(await client.next('error'), error('FST_SOCKET_BAD_REQUEST', 'Bad request: the key "constructor" is not allowed', 'r2'))
  await alive(t, client)
})

t.test('limits of the envelope fields are inclusive', async (t) => {
  const seen: CommandContext[] = []
  const { client } = await start(t, {}, (app) => {
    app.socket.command('c'.repeat(128), { handler: (_param, ctx) => { seen.push(ctx); return 'ok' } })
  })
  const ref = 'r'.repeat(64)
  t.strictSame(await client.request(HOME, 'c'.repeat(128), null, ref), { channel: HOME, cmd: 'reply', param: 'ok', ref })
  t.equal(seen[0]?.ref, ref)
  // Extra envelope fields (a client echoing `seq`, say) are ignored rather than refused.
  client.send({ channel: HOME, cmd: 'ping', ref: 'extra', seq: 3, other: true })
  t.strictSame(await client.next((m) => m.ref === 'extra'), { channel: HOME, cmd: 'pong', param: null, ref: 'extra' })
  await alive(t, client)
})

t.test('param nesting deeper than maxDepth (default 32) is refused', async (t) => {
  const handled: unknown[] = []
  const { client } = await start(t, {}, (app) => {
    app.socket.command('echo', { handler: (param) => { handled.push(param); return param } })
  })
  for (const [name, nested] of [['arrays', nestedArrays], ['objects', nestedObjects]] as const) {
    const ok = nested(32)
    t.strictSame(await client.request(HOME, 'echo', ok, `ok-${name}`), { channel: HOME, cmd: 'reply', param: ok, ref: `ok-${name}` }, `32 levels of ${name} pass`)
    client.send({ channel: HOME, cmd: 'echo', param: nested(33), ref: `deep-${name}` })
    t.strictSame(await client.next('error'), error('FST_SOCKET_BAD_REQUEST', 'Bad request: nesting deeper than 32 levels', `deep-${name}`), `33 levels of ${name} are refused, with the ref`)
    await alive(t, client)
  }
  t.equal(handled.length, 2, 'the handler only saw the messages within the limit')
})

t.test('a custom maxDepth is enforced', async (t) => {
  const { client } = await start(t, { maxDepth: 3 }, (app) => {
    app.socket.command('echo', { handler: (param) => param })
  })
  t.strictSame(await client.request(HOME, 'echo', { a: [{ b: 1 }] }, 'ok'), { channel: HOME, cmd: 'reply', param: { a: [{ b: 1 }] }, ref: 'ok' })
  client.send({ channel: HOME, cmd: 'echo', param: { a: [{ b: [] }] }, ref: 'deep' })
  t.strictSame(await client.next('error'), error('FST_SOCKET_BAD_REQUEST', 'Bad request: nesting deeper than 3 levels', 'deep'))
  await alive(t, client)
})

t.test('very deep nesting within maxPayload is refused without a stack overflow', async (t) => {
  const { client } = await start(t)
  const depth = 25_000
  client.send(`{"channel":"${HOME}","cmd":"ping","param":${'['.repeat(depth)}${']'.repeat(depth)}}`)
  t.strictSame(await client.next('error'), error('FST_SOCKET_BAD_REQUEST', 'Bad request: nesting deeper than 32 levels'))
  await alive(t, client)
})

t.test('__proto__, constructor and prototype keys are refused anywhere and pollute nothing', async (t) => {
  const handled: unknown[] = []
  const { client } = await start(t, {}, (app) => {
    app.socket.command('merge', { handler: (param) => { handled.push(Object.assign({}, param)); return null } })
  })
  const cases: Array<[string, string, string]> = [
    ['__proto__ in param', `{"channel":"${HOME}","cmd":"merge","param":{"__proto__":{"polluted":true}}}`, '__proto__'],
    ['nested __proto__', `{"channel":"${HOME}","cmd":"merge","param":{"a":{"b":{"__proto__":{"polluted":true}}}}}`, '__proto__'],
    ['__proto__ in an array', `{"channel":"${HOME}","cmd":"merge","param":[1,[{"__proto__":{"polluted":true}}]]}`, '__proto__'],
    ['constructor in param', `{"channel":"${HOME}","cmd":"merge","param":{"constructor":{"prototype":{"polluted":true}}}}`, 'constructor'],
    ['constructor in an array', `{"channel":"${HOME}","cmd":"merge","param":[{"constructor":1}]}`, 'constructor'],
    ['prototype in param', `{"channel":"${HOME}","cmd":"merge","param":{"x":{"prototype":{"polluted":true}}}}`, 'prototype'],
    ['prototype in an array', `{"channel":"${HOME}","cmd":"merge","param":[[{"prototype":1}]]}`, 'prototype'],
    ['__proto__ on the envelope', `{"channel":"${HOME}","cmd":"merge","__proto__":{"polluted":true}}`, '__proto__'],
    ['constructor on the envelope', `{"channel":"${HOME}","cmd":"merge","constructor":{"prototype":{"polluted":true}}}`, 'constructor']
  ]
  for (const [name, frame, key] of cases) {
    client.send(frame)
    t.strictSame(await client.next('error'), error('FST_SOCKET_BAD_REQUEST', `Bad request: the key "${key}" is not allowed`), name)
    await alive(t, client)
  }
  t.strictSame(handled, [], 'no handler saw a forbidden key')
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype is not polluted')
  t.notOk(Object.prototype.hasOwnProperty.call(Object.prototype, 'polluted'))
  // Ordinary keys that merely contain the words pass.
  t.strictSame(await client.request(HOME, 'merge', { proto: 1, constructors: 2, __proto: 3 }, 'fine'), { channel: HOME, cmd: 'reply', param: null, ref: 'fine' })
})

t.test('an unknown command gets FST_SOCKET_UNKNOWN_COMMAND, with the ref when one was set', async (t) => {
  const { client } = await start(t)
  t.strictSame(await client.request(HOME, 'nope', { x: 1 }, 'u1'), error('FST_SOCKET_UNKNOWN_COMMAND', 'Unknown command "nope"', 'u1'))
  client.send({ channel: HOME, cmd: 'nope' })
  t.strictSame(await client.next('error'), error('FST_SOCKET_UNKNOWN_COMMAND', 'Unknown command "nope"'))
  // Server → client reserved names are not commands a client can send.
  t.strictSame(await client.request(HOME, 'connected', null, 'u2'), error('FST_SOCKET_UNKNOWN_COMMAND', 'Unknown command "connected"', 'u2'))
  await alive(t, client)
})

t.test('a message for a channel the connection is not in gets FST_SOCKET_NOT_SUBSCRIBED', async (t) => {
  const handled: unknown[] = []
  const { client } = await start(t, {}, (app) => {
    app.socket.command('say', { handler: (param) => { handled.push(param) } })
  })
  t.strictSame(await client.request('room-b', 'say', 'hi', 'n1'), error('FST_SOCKET_NOT_SUBSCRIBED', 'This connection is not a member of channel "room-b"', 'n1', 'room-b'))
  client.send({ channel: 'room-b', cmd: 'say', param: 'hi' })
  t.strictSame(await client.next('error'), error('FST_SOCKET_NOT_SUBSCRIBED', 'This connection is not a member of channel "room-b"', undefined, 'room-b'))
  // Membership is checked before the command is looked up: nothing about a foreign channel is revealed.
  t.strictSame(await client.request('room-b', 'nope', null, 'n2'), error('FST_SOCKET_NOT_SUBSCRIBED', 'This connection is not a member of channel "room-b"', 'n2', 'room-b'))
  t.strictSame(await client.request('', 'say', null, 'n3'), error('FST_SOCKET_NOT_SUBSCRIBED', 'This connection is not a member of channel ""', 'n3', ''))
  t.strictSame(handled, [])
  await alive(t, client)
})

t.test('ping is answered by pong with the ref', async (t) => {
  const { client } = await start(t)
  t.strictSame(await client.request(HOME, 'ping', null, 'p1'), { channel: HOME, cmd: 'pong', param: null, ref: 'p1' })
  client.send({ channel: HOME, cmd: 'ping' })
  t.strictSame(await client.next('pong'), { channel: HOME, cmd: 'pong', param: null }, 'without a ref, a pong without one')
  await alive(t, client)
  t.strictSame(client.messages, [], 'a ping gets exactly one answer')
})

t.test('registered commands', async (t) => {
  const contexts: CommandContext[] = []
  const seen: unknown[] = []
  let connectionId: string | undefined
  const { client, app, connected } = await start(t, {}, (app) => {
    app.socket.command('say', {
      schema: Type.Object({ text: Type.String({ minLength: 1 }) }),
      handler: (param, ctx) => {
        contexts.push(ctx)
        return { said: param.text }
      }
    })
    app.socket.command('nothing', { handler: (param) => { seen.push(param) } })
    app.socket.command('zero', { handler: () => 0 })
    app.socket.command('no', { handler: async () => await Promise.resolve(false) })
  })
  connectionId = (connected.param as { connectionId: string }).connectionId
  t.equal(app.socket.connections()[0]?.id, connectionId)

  t.test('a valid param gets a reply with the same ref and the return value', async (t) => {
    t.strictSame(await client.request(HOME, 'say', { text: 'hi' }, 'c1'), { channel: HOME, cmd: 'reply', param: { said: 'hi' }, ref: 'c1' })
    const ctx = contexts.pop()
    t.equal(ctx?.channel, HOME)
    t.equal(ctx?.ref, 'c1')
    t.equal(ctx?.connection.id, connectionId)
    t.type(ctx?.log.info, 'function')
  })

  t.test('a param that fails the schema gets FST_SOCKET_INVALID_PARAM', async (t) => {
    t.strictSame(await client.request(HOME, 'say', { text: '' }, 'c2'),
      error('FST_SOCKET_INVALID_PARAM', 'Invalid param for "say": /text must not have fewer than 1 characters', 'c2'))
    t.strictSame(await client.request(HOME, 'say', { text: 3 }, 'c3'),
      error('FST_SOCKET_INVALID_PARAM', 'Invalid param for "say": /text must be string', 'c3'))
    t.strictSame(await client.request(HOME, 'say', undefined, 'c4'),
      error('FST_SOCKET_INVALID_PARAM', 'Invalid param for "say": param must be object', 'c4'))
    client.send({ channel: HOME, cmd: 'say', param: {} })
    t.strictSame(await client.next('error'),
      error('FST_SOCKET_INVALID_PARAM', 'Invalid param for "say": param must have required properties text'))
    t.strictSame(contexts, [], 'the handler never ran')
    await alive(t, client)
  })

  t.test('a handler that returns nothing replies null; falsy values are kept', async (t) => {
    t.strictSame(await client.request(HOME, 'nothing', { a: 1 }, 'c5'), { channel: HOME, cmd: 'reply', param: null, ref: 'c5' })
    t.strictSame(await client.request(HOME, 'zero', null, 'c6'), { channel: HOME, cmd: 'reply', param: 0, ref: 'c6' })
    t.strictSame(await client.request(HOME, 'no', null, 'c7'), { channel: HOME, cmd: 'reply', param: false, ref: 'c7' })
    t.strictSame(seen.splice(0), [{ a: 1 }])
  })

  t.test('without a ref the handler runs and nothing is sent back', async (t) => {
    client.send({ channel: HOME, cmd: 'say', param: { text: 'quiet' } })
    client.send({ channel: HOME, cmd: 'nothing' })
    // Both frames are handled before the ping behind them is answered; any reply would have come first.
    await alive(t, client)
    t.equal(contexts.length, 1)
    t.equal(contexts.pop()?.ref, undefined)
    t.strictSame(seen.splice(0), [undefined], 'a missing param reaches the handler as undefined')
  })
})

t.test('handler errors', async (t) => {
  const AppConflict = createError('APP_CONFLICT', 'Conflict on %s', 409)
  const AppBroken = createError('APP_BROKEN', 'database password is hunter2', 500)
  const internal = 'secret: database password is hunter2'
  const { client } = await start(t, {}, (app) => {
    app.socket.command('forbid', { handler: () => { throw forbidden('not your room') } })
    app.socket.command('bad', { handler: async () => { throw badRequest('text is rude') } })
    app.socket.command('conflict', { handler: () => { throw new AppConflict('seat 4') } })
    app.socket.command('throw', { handler: () => { throw new Error(internal) } })
    app.socket.command('reject', { handler: async () => await Promise.reject(new Error(internal)) })
    app.socket.command('throw-string', { handler: () => { throw internal as unknown as Error } })
    app.socket.command('throw-500', { handler: () => { throw new AppBroken() } })
    app.socket.command('throw-code-only', { handler: () => { throw Object.assign(new Error(internal), { code: 'E_SECRET' }) } })
    app.socket.command('throw-status-only', { handler: () => { throw Object.assign(new Error(internal), { statusCode: 400 }) } })
    app.socket.command('throw-plain-object', { handler: () => { throw { code: 'APP_X', statusCode: 400, message: internal } as unknown as Error } })
  })
  const unhandled: unknown[] = []
  const onUnhandled = (reason: unknown): void => { unhandled.push(reason) }
  process.on('unhandledRejection', onUnhandled)
  t.after(() => { process.removeListener('unhandledRejection', onUnhandled) })

  t.test('a coded 4xx error reaches the client with its code and message', async (t) => {
    t.strictSame(await client.request(HOME, 'forbid', null, 'e1'), error('FST_SOCKET_FORBIDDEN', 'Forbidden: not your room', 'e1'))
    t.strictSame(await client.request(HOME, 'bad', null, 'e2'), error('FST_SOCKET_BAD_REQUEST', 'Bad request: text is rude', 'e2'))
    t.strictSame(await client.request(HOME, 'conflict', null, 'e3'), error('APP_CONFLICT', 'Conflict on seat 4', 'e3'))
    client.send({ channel: HOME, cmd: 'forbid' })
    t.strictSame(await client.next('error'), error('FST_SOCKET_FORBIDDEN', 'Forbidden: not your room'), 'an error is sent even without a ref')
    await alive(t, client)
  })

  t.test('any other failure is FST_SOCKET_HANDLER_FAILED, and the internal message stays on the server', async (t) => {
    for (const cmd of ['throw', 'reject', 'throw-string', 'throw-500', 'throw-code-only', 'throw-status-only', 'throw-plain-object']) {
      const answer = await client.request(HOME, cmd, null, `f-${cmd}`)
      t.strictSame(answer, error('FST_SOCKET_HANDLER_FAILED', 'The command handler failed', `f-${cmd}`), cmd)
      t.notMatch(JSON.stringify(answer), /hunter2|secret/, `${cmd} leaks nothing`)
      await alive(t, client)
    }
    t.strictSame(unhandled, [], 'no unhandled rejection')
  })
})

t.test('an unexpected handler failure is logged with its error; a refused message is not an error log', async (t) => {
  const lines: Array<{ level: number, msg: string, err?: { message: string }, code?: string, connId?: string, act?: string, custom?: boolean }> = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line.length > 0) lines.push(JSON.parse(line))
      done()
    }
  })
  const app = Fastify({ logger: { level: 'debug', stream } })
  await app.register(forgeSocket, { jwt: { secret: SECRET } })
  room(app)
  app.get('/ws-logged', app.socket.act('logged', (app, ps) => {
    ps.logger.info('deciding')
    return ps.upgrade('logged', undefined, ps.profile, ps.logger.child({ custom: true }))
  }))
  app.socket.command('throw', { handler: () => { throw new Error('disk full') } })
  app.socket.command('forbid', { handler: () => { throw forbidden() } })
  t.after(() => app.close())
  const base = await listen(app)
  const { client } = await connect(`${base}/ws/a`, TOKEN)
  t.strictSame(await client.request(HOME, 'throw', { secret: 'payload' }, 'l1'), error('FST_SOCKET_HANDLER_FAILED', 'The command handler failed', 'l1'))
  t.strictSame(await client.request(HOME, 'forbid', null, 'l2'), error('FST_SOCKET_FORBIDDEN', 'Forbidden: access denied', 'l2'))
  const failed = lines.filter((l) => l.msg === 'command handler failed')
  t.equal(failed.length, 1)
  t.equal(failed[0]?.level, 50, 'logged at error level')
  t.equal(failed[0]?.err?.message, 'disk full')
  t.type(failed[0]?.connId, 'string', 'with the connection id')
  t.equal(failed[0]?.act, 'room', 'and the act\'s name')
  const refused = lines.filter((l) => l.msg === 'message refused')
  t.strictSame(refused.map((l) => [l.level, l.code]), [[20, 'FST_SOCKET_FORBIDDEN']], 'a refusal is a debug line with its code')
  t.notOk(lines.some((l) => JSON.stringify(l).includes('payload')), 'no param is logged')

  // A connection that never had an error logged: its debug lines carry its id all the same.
  const closed = closes(app)
  const second = await connect(`${base}/ws/a`, TOKEN)
  await second.client.request(HOME, 'forbid', null, 'l3')
  second.client.close()
  const secondId = idOf(second.connected)
  await closed.wait(secondId)
  const ofSecond = lines.filter((l) => l.connId === secondId).map((l) => l.msg)
  t.ok(['connection open', 'message refused', 'connection closed'].every((msg) => ofSecond.includes(msg)), `open, refused and closed lines with its connId: ${ofSecond.join(', ')}`)
  t.ok(lines.filter((l) => l.connId === secondId).every((l) => l.act === 'room'), 'each with the act\'s name')

  // A handler that logged through ps.logger, or gave its own logger: the connection's lines come from that one.
  const third = await connect(`${base}/ws-logged`, TOKEN)
  await third.client.request('logged', 'throw', null, 'l4')
  const thirdId = idOf(third.connected)
  t.match(lines.find((l) => l.msg === 'deciding'), { act: 'logged' }, 'ps.logger has the act\'s name')
  t.match(lines.find((l) => l.connId === thirdId && l.msg === 'command handler failed'), { act: 'logged', custom: true }, 'the given logger\'s bindings are on the connection\'s lines')
  third.client.close()
})

t.test('registering commands', async (t) => {
  const app = await build()
  t.after(() => app.close())
  const handler = (): null => null
  t.ok(RESERVED_COMMANDS.length > 0)
  for (const cmd of RESERVED_COMMANDS) {
    t.throws(() => app.socket.command(cmd, { handler }), {
      code: 'FST_SOCKET_RESERVED_COMMAND',
      message: `Command "${cmd}" is reserved by the protocol and cannot be handled by the application`
    }, cmd)
  }
  app.socket.command('chat', { handler })
  t.throws(() => app.socket.command('chat', { handler }), { code: 'FST_SOCKET_DUPLICATE_COMMAND', message: 'Command "chat" already has a handler' })
  t.throws(() => app.socket.command('no-handler', {} as unknown as { handler: () => null }),
    { code: 'FST_SOCKET_INVALID_OPTIONS', message: 'Invalid forge-socket options: command "no-handler" needs a handler function' })
  t.throws(() => app.socket.command('not-a-function', { handler: 'x' } as unknown as { handler: () => null }), { code: 'FST_SOCKET_INVALID_OPTIONS' })
  t.throws(() => app.socket.command('no-definition', undefined as unknown as { handler: () => null }), { code: 'FST_SOCKET_INVALID_OPTIONS' })
  t.throws(() => app.socket.command('', { handler }), { code: 'FST_SOCKET_INVALID_OPTIONS', message: 'Invalid forge-socket options: a command needs a name' })
  t.throws(() => app.socket.command(7 as unknown as string, { handler }), { code: 'FST_SOCKET_INVALID_OPTIONS' })
  // A refused registration leaves nothing behind: the name is still free.
  app.socket.command('no-handler', { handler })
})

t.test('subscribe is denied by default', async (t) => {
  const { client } = await start(t)
  t.strictSame(await client.request('room-b', 'subscribe', null, 's1'), error('FST_SOCKET_FORBIDDEN', 'Forbidden: subscribing to "room-b"', 's1', 'room-b'))
  t.strictSame(await client.request('room-b', 'ping', null, 's2'), { channel: 'room-b', cmd: 'pong', param: null, ref: 's2' })
  t.strictSame(await client.request('room-b', 'nope', null, 's3'), error('FST_SOCKET_NOT_SUBSCRIBED', 'This connection is not a member of channel "room-b"', 's3', 'room-b'))
  await alive(t, client)
})

t.test('subscribe and unsubscribe with authorizeChannel', async (t) => {
  const asked: Array<[unknown, string]> = []
  const said: Array<[string, unknown]> = []
  const { app, client } = await start(t, {
    maxChannelsPerConnection: 3,
    authorizeChannel: async (profile, channel) => {
      asked.push([profile?.id, channel])
      if (channel === 'public-boom') throw new Error('authorizer exploded')
      return channel.startsWith('public-')
    }
  }, (app) => {
    app.socket.command('say', { handler: (param, ctx) => { said.push([ctx.channel, param]) } })
  })

  t.test('an allowed channel: reply { channel }, then its broadcasts arrive', async (t) => {
    t.strictSame(await client.request('public-news', 'subscribe', null, 'a1'), { channel: 'public-news', cmd: 'reply', param: { channel: 'public-news' }, ref: 'a1' })
    t.strictSame(asked.splice(0), [['ann', 'public-news']], 'authorizeChannel got the profile and the channel')
    t.strictSame(app.socket.connections()[0]?.channels, [HOME, 'public-news'])
    t.equal(app.socket.broadcast('public-news', { cmd: 'headline', param: { title: 'hi' } }), 1)
    t.strictSame(await client.next('headline'), { channel: 'public-news', cmd: 'headline', param: { title: 'hi' }, seq: 1 })
    t.strictSame(await client.request('public-news', 'say', 'hello', 'a2'), { channel: 'public-news', cmd: 'reply', param: null, ref: 'a2' })
    t.strictSame(said.splice(0), [['public-news', 'hello']], 'commands now run on the channel')
  })

  t.test('subscribing twice is fine and delivers once', async (t) => {
    t.strictSame(await client.request('public-news', 'subscribe', null, 'a3'), { channel: 'public-news', cmd: 'reply', param: { channel: 'public-news' }, ref: 'a3' })
    t.strictSame(asked.splice(0), [], 'a member is not asked again')
    t.equal(app.socket.broadcast('public-news', { cmd: 'headline', param: 2 }), 1)
    t.strictSame(await client.next('headline'), { channel: 'public-news', cmd: 'headline', param: 2, seq: 2 })
    await alive(t, client)
  })

  t.test('a channel the authorizer refuses', async (t) => {
    t.strictSame(await client.request('private-x', 'subscribe', null, 'a4'), error('FST_SOCKET_FORBIDDEN', 'Forbidden: subscribing to "private-x"', 'a4', 'private-x'))
    t.strictSame(await client.request('public-boom', 'subscribe', null, 'a5'), error('FST_SOCKET_HANDLER_FAILED', 'The command handler failed', 'a5', 'public-boom'), 'an authorizer that throws hides its error')
    t.strictSame(asked.splice(0), [['ann', 'private-x'], ['ann', 'public-boom']])
    t.strictSame(app.socket.connections()[0]?.channels, [HOME, 'public-news'])
    await alive(t, client)
  })

  t.test('an invalid channel name', async (t) => {
    t.strictSame(await client.request('bad name!', 'subscribe', null, 'a6'),
      error('FST_SOCKET_INVALID_CHANNEL', 'Invalid channel name: "bad name!" (1–255 characters of A-Z a-z 0-9 _ . : @ / -, no "..")', 'a6', 'bad name!'))
    t.strictSame(await client.request('', 'subscribe', null, 'a7'),
      error('FST_SOCKET_INVALID_CHANNEL', 'Invalid channel name: "" (1–255 characters of A-Z a-z 0-9 _ . : @ / -, no "..")', 'a7', ''))
    const long = `public-${'x'.repeat(100)}!`
    t.strictSame(await client.request(long, 'subscribe', null, 'a8'),
      error('FST_SOCKET_INVALID_CHANNEL', `Invalid channel name: "${long.slice(0, 40)}…" (1–255 characters of A-Z a-z 0-9 _ . : @ / -, no "..")`, 'a8', long))
    t.strictSame(asked.splice(0), [], 'the authorizer is not asked about an invalid name')
    await alive(t, client)
  })

  t.test('over maxChannelsPerConnection', async (t) => {
    t.strictSame(await client.request('public-sport', 'subscribe', null, 'a9'), { channel: 'public-sport', cmd: 'reply', param: { channel: 'public-sport' }, ref: 'a9' })
    t.strictSame(await client.request('public-weather', 'subscribe', null, 'a10'),
      error('FST_SOCKET_LIMIT_EXCEEDED', 'Limit exceeded: at most 3 channels per connection', 'a10', 'public-weather'))
    t.strictSame(await client.request('public-sport', 'subscribe', null, 'a11'), { channel: 'public-sport', cmd: 'reply', param: { channel: 'public-sport' }, ref: 'a11' }, 'a channel it is in is still fine at the limit')
    asked.splice(0)
    await alive(t, client)
  })

  t.test('unsubscribe: reply { channel }, then no more broadcasts', async (t) => {
    t.strictSame(await client.request('public-news', 'unsubscribe', null, 'a12'), { channel: 'public-news', cmd: 'reply', param: { channel: 'public-news' }, ref: 'a12' })
    t.strictSame(app.socket.connections()[0]?.channels, [HOME, 'public-sport'])
    t.equal(app.socket.broadcast('public-news', { cmd: 'headline', param: 3 }), 0)
    t.strictSame(await client.request('public-news', 'say', 'hello', 'a13'), error('FST_SOCKET_NOT_SUBSCRIBED', 'This connection is not a member of channel "public-news"', 'a13', 'public-news'))
    await alive(t, client)
    t.strictSame(await client.request('public-news', 'unsubscribe', null, 'a14'), { channel: 'public-news', cmd: 'reply', param: { channel: 'public-news' }, ref: 'a14' }, 'leaving a channel twice is fine')
    t.strictSame(await client.request('public-weather', 'subscribe', null, 'a15'), { channel: 'public-weather', cmd: 'reply', param: { channel: 'public-weather' }, ref: 'a15' }, 'the freed slot can be used')
    t.equal(app.socket.broadcast('public-weather', { cmd: 'forecast', param: 'rain' }), 1)
    t.strictSame(await client.next('forecast'), { channel: 'public-weather', cmd: 'forecast', param: 'rain', seq: 1 })
    await alive(t, client)
  })
})

t.test('concurrent subscribes cannot pass maxChannelsPerConnection', async (t) => {
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  let asked = 0
  const { app, client } = await start(t, {
    maxChannelsPerConnection: 2,
    authorizeChannel: async () => {
      if (++asked === 4) release()
      await gate
      return true
    }
  })
  const answers = await Promise.all(['p-1', 'p-2', 'p-3', 'p-4'].map((channel) => client.request(channel, 'subscribe', null, channel)))
  const accepted = answers.filter((m) => m.cmd === 'reply').map((m) => m.channel)
  t.equal(accepted.length, 1, 'one subscribe fits beside the home channel')
  t.equal(app.socket.connections()[0]?.channels.length, 2)
  for (const m of answers.filter((m) => m.cmd === 'error')) {
    t.strictSame(m.param, { code: 'FST_SOCKET_LIMIT_EXCEEDED', message: 'Limit exceeded: at most 2 channels per connection' })
  }
  await alive(t, client)
})

t.test('concurrent subscribes to the same channel join it once', async (t) => {
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  let asked = 0
  const { app, client } = await start(t, {
    authorizeChannel: async () => {
      if (++asked === 2) release()
      await gate
      return true
    }
  })
  const answers = await Promise.all(['same-1', 'same-2'].map((ref) => client.request('p-same', 'subscribe', null, ref)))
  t.strictSame(answers.map((m) => [m.cmd, m.param]), [['reply', { channel: 'p-same' }], ['reply', { channel: 'p-same' }]])
  t.strictSame(app.socket.connections()[0]?.channels, [HOME, 'p-same'])
  t.equal(app.socket.broadcast('p-same', { cmd: 'once', param: null }), 1)
  t.strictSame(await client.next('once'), { channel: 'p-same', cmd: 'once', param: null, seq: 1 })
  await alive(t, client)
})

t.test('a connection that closes while its subscribe is being authorized is left in no channel', async (t) => {
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  let asked: () => void = () => {}
  const authorizing = new Promise<void>((resolve) => { asked = resolve })
  const { app, client, base, connected } = await start(t, {
    authorizeChannel: async () => {
      asked()
      await gate
      return true
    }
  })
  const closed = closes(app)
  client.send({ channel: 'p-late', cmd: 'subscribe', ref: 'late' })
  await authorizing
  client.close()
  await closed.wait(idOf(connected))
  release()
  // Another connection's round trip comes after everything the released subscribe does.
  const { client: other } = await connect(`${base}/ws/b`, TOKEN)
  await alive(t, other, 'room-b')
  t.strictSame(app.socket.channels().map((c) => c.name), ['room-b'])
  t.strictSame(app.socket.connections('p-late'), [])
})

t.test('binary frames', async (t) => {
  t.test('are refused with 1003 by default', async (t) => {
    const { client } = await start(t)
    client.ws.send(Buffer.from([1, 2, 3]))
    t.strictSame(await client.closed, { code: 1003, reason: 'binary frames are not accepted' })
  })

  t.test('reach onBinary when the route opts in', async (t) => {
    const received: Array<[Buffer, string]> = []
    let arrived: () => void = () => {}
    const { client, connected } = await start(t, {}, undefined, {
      onBinary: (data, connectionId) => {
        received.push([data, connectionId])
        arrived()
        if (data[0] === 0xff) throw forbidden('no 0xff')
        if (data[0] === 0xee) throw new Error('decoder crashed')
      }
    })
    const next = new Promise<void>((resolve) => { arrived = resolve })
    client.ws.send(Buffer.from([1, 2, 3]))
    await next
    t.strictSame(received.map(([data, id]) => [[...data], id]), [[[1, 2, 3], (connected.param as { connectionId: string }).connectionId]])
    await alive(t, client)
    client.ws.send(Buffer.from([0xff]))
    t.strictSame(await client.next('error'), error('FST_SOCKET_FORBIDDEN', 'Forbidden: no 0xff'), 'a coded error from onBinary is sent on the home channel')
    client.ws.send(Buffer.from([0xee]))
    t.strictSame(await client.next('error'), error('FST_SOCKET_HANDLER_FAILED', 'The command handler failed'))
    await alive(t, client)
  })
})

t.test('a frame over maxPayload closes with 1009', async (t) => {
  const { client } = await start(t, { maxPayload: 1024 }, (app) => {
    app.socket.command('echo', { handler: (param) => param })
  })
  const fits = 'x'.repeat(900)
  t.strictSame(await client.request(HOME, 'echo', fits, 'm1'), { channel: HOME, cmd: 'reply', param: fits, ref: 'm1' })
  client.send({ channel: HOME, cmd: 'echo', param: 'x'.repeat(2000) })
  t.equal((await client.closed).code, 1009)
})

t.test('invalid UTF-8 in a text frame closes with 1007', async (t) => {
  const { client } = await start(t)
  client.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false })
  t.equal((await client.closed).code, 1007)
})

t.test('frames sent before the connection is open are answered in order once it is', async (t) => {
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  const { app, base } = await start(t, {}, (app) => {
    app.socket.onOpen(async () => { await gate })
  })
  // Count the frames the server received on the raw socket; the open hook holds the connection until all are in.
  app.websocketServer.on('connection', (socket: WebSocket) => {
    let count = 0
    socket.on('message', () => { if (++count === 3) release() })
  })
  const client = new Client(`${base}/ws/a`, { headers: { authorization: `Bearer ${TOKEN}` } })
  await client.opened
  for (const ref of ['o1', 'o2', 'o3']) client.send({ channel: HOME, cmd: 'ping', ref })
  t.strictSame(await client.next('connected').then((m) => m.cmd), 'connected')
  for (const ref of ['o1', 'o2', 'o3']) t.strictSame(await client.next((m) => m.ref === ref), { channel: HOME, cmd: 'pong', param: null, ref })
})

t.test('too many frames before the connection is open close it with 1008', async (t) => {
  const { base } = await start(t, {}, (app) => {
    app.socket.onOpen(async () => { await new Promise<void>(() => {}) })
  })
  const client = new Client(`${base}/ws/a`, { headers: { authorization: `Bearer ${TOKEN}` } })
  await client.opened
  for (let i = 0; i < 300; i++) client.send({ channel: HOME, cmd: 'ping' })
  t.strictSame(await client.closed, { code: 1008, reason: 'too many frames before open' })
})
