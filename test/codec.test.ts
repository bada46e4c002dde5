import t from 'tap'
import { randomUUID } from 'node:crypto'
import fc from 'fast-check'
import Type from 'typebox'
import { decode, encode, encodeConnected, envelope, isValidChannel, assertChannel, type ConnectedParam } from '../lib/codec.js'
import { RESERVED_COMMANDS, isReserved, isSendableCloseCode, closeReason } from '../lib/protocol.js'
import { CommandRegistry, type CommandContext } from '../lib/commands.js'

/** What decode threw, as a user would check it. */
function thrown (fn: () => unknown): { code: unknown, message: unknown } | null {
  try {
    fn()
  } catch (err) {
    const { code, message } = err as { code: unknown, message: unknown }
    return { code, message }
  }
  return null
}

t.test('decode returns the envelope of a valid frame', async (t) => {
  t.strictSame(decode('{"channel":"room-a","cmd":"say","param":{"text":"hi"},"ref":"1"}', 32),
    { channel: 'room-a', cmd: 'say', param: { text: 'hi' }, ref: '1' })
  t.strictSame(decode('{"channel":"room-a","cmd":"say"}', 32), { channel: 'room-a', cmd: 'say' }, 'param and ref are optional')
  t.strictSame(decode('{"channel":"","cmd":"x","param":null}', 32), { channel: '', cmd: 'x', param: null },
    'the envelope does not judge channel names: membership and subscribe do')
  const unicode = decode('{"channel":"c","cmd":"x","param":"żółw 🐢"}', 32)
  t.equal(unicode.param, 'żółw 🐢')
})

t.test('encodeConnected gives what encode gives for the envelope, for every valid channel name', async (t) => {
  const channel = fc.stringMatching(/^[A-Za-z0-9_.:@/-]{1,255}$/).filter((name) => isValidChannel(name))
  const dedupe = fc.option(fc.record({ window: fc.integer({ min: 1, max: 2 ** 31 }), scope: fc.constantFrom('user' as const, 'connection' as const) }), { nil: undefined })
  // fast-check throws with the smallest counterexample it finds.
  t.doesNotThrow(() => fc.assert(fc.property(channel, dedupe, (name, advertised) => {
    const param: ConnectedParam = { connectionId: randomUUID(), channels: [name] }
    if (advertised !== undefined) param.dedupe = { ...advertised }
    return encodeConnected(name, param) === encode(envelope(name, 'connected', param))
  }), { numRuns: 200 }))
})

t.test('decode refuses what is not an envelope with FST_SOCKET_BAD_REQUEST', async (t) => {
  const cases: Array<[string, string]> = [
    ['', 'the frame is not valid JSON'],
    ['{', 'the frame is not valid JSON'],
    ["{'channel':'a'}", 'the frame is not valid JSON'],
    ['null', 'a message must be a JSON object'],
    ['[]', 'a message must be a JSON object'],
    ['"x"', 'a message must be a JSON object'],
    ['1', 'a message must be a JSON object'],
    ['false', 'a message must be a JSON object'],
    ['{}', 'message must have required properties channel, cmd'],
    ['{"channel":"a"}', 'message must have required properties cmd'],
    ['{"cmd":"x"}', 'message must have required properties channel'],
    ['{"channel":1,"cmd":"x"}', '/channel must be string'],
    ['{"channel":"a","cmd":["x"]}', '/cmd must be string'],
    ['{"channel":"a","cmd":""}', '/cmd must not have fewer than 1 characters'],
    ['{"channel":"a","cmd":"x","ref":1}', '/ref must be string'],
    ['{"channel":"a","cmd":"x","ref":null}', '/ref must be string'],
    ['{"channel":"a","cmd":"x","ref":""}', '/ref must not have fewer than 1 characters'],
    [`{"channel":"a","cmd":"x","ref":"${'r'.repeat(65)}"}`, '/ref must not have more than 64 characters'],
    [`{"channel":"${'c'.repeat(256)}","cmd":"x"}`, '/channel must not have more than 255 characters'],
    [`{"channel":"a","cmd":"${'c'.repeat(129)}"}`, '/cmd must not have more than 128 characters']
  ]
  for (const [frame, message] of cases) {
    t.strictSame(thrown(() => decode(frame, 32)), { code: 'FST_SOCKET_BAD_REQUEST', message: `Bad request: ${message}` }, frame.slice(0, 50))
  }
})

t.test('decode limits nesting to maxDepth levels below the envelope', async (t) => {
  const arrays = (depth: number): string => `${'['.repeat(depth)}${']'.repeat(depth)}`
  const objects = (depth: number): string => `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`
  for (const maxDepth of [1, 2, 32]) {
    for (const [name, nest] of [['arrays', arrays], ['objects', objects]] as const) {
      t.equal(thrown(() => decode(`{"channel":"a","cmd":"x","param":${nest(maxDepth)}}`, maxDepth)), null, `${maxDepth} levels of ${name} with maxDepth ${maxDepth}`)
      t.strictSame(thrown(() => decode(`{"channel":"a","cmd":"x","param":${nest(maxDepth + 1)}}`, maxDepth)),
        { code: 'FST_SOCKET_BAD_REQUEST', message: `Bad request: nesting deeper than ${maxDepth} levels` }, `${maxDepth + 1} levels of ${name} with maxDepth ${maxDepth}`)
    }
  }
  t.equal(thrown(() => decode('{"channel":"a","cmd":"x","param":[1,"s",null,true]}', 1)), null, 'scalars add no level')
  t.strictSame(thrown(() => decode('{"channel":"a","cmd":"x","extra":[[1]]}', 1)),
    { code: 'FST_SOCKET_BAD_REQUEST', message: 'Bad request: nesting deeper than 1 levels' }, 'fields beside param count too')
  t.strictSame(thrown(() => decode(`{"channel":"a","cmd":"x","param":${arrays(100_000)}}`, 32)),
    { code: 'FST_SOCKET_BAD_REQUEST', message: 'Bad request: nesting deeper than 32 levels' }, 'very deep input: no stack overflow')
})

t.test('decode refuses __proto__, constructor and prototype keys anywhere', async (t) => {
  for (const key of ['__proto__', 'constructor', 'prototype']) {
    const expected = { code: 'FST_SOCKET_BAD_REQUEST', message: `Bad request: the key "${key}" is not allowed` }
    t.strictSame(thrown(() => decode(`{"channel":"a","cmd":"x","param":{"${key}":{"polluted":1}}}`, 32)), expected, `${key} in param`)
    t.strictSame(thrown(() => decode(`{"channel":"a","cmd":"x","param":{"a":[{"b":{"${key}":1}}]}}`, 32)), expected, `${key} deep in param`)
    t.strictSame(thrown(() => decode(`{"channel":"a","cmd":"x","param":[[1,{"${key}":1}]]}`, 32)), expected, `${key} in an array`)
    t.strictSame(thrown(() => decode(`{"${key}":{"polluted":1},"channel":"a","cmd":"x"}`, 32)), expected, `${key} on the envelope`)
  }
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype is untouched')
  t.equal(thrown(() => decode('{"channel":"a","cmd":"x","param":{"__proto":1,"constructors":2,"Prototype":3}}', 32)), null, 'look-alike keys pass')
})

t.test('encode serializes once, dropping an undefined ref', async (t) => {
  t.equal(encode({ channel: 'room-a', cmd: 'reply', param: { ok: true }, ref: undefined }), '{"channel":"room-a","cmd":"reply","param":{"ok":true}}')
  t.strictSame(JSON.parse(encode({ channel: 'c', cmd: 'x', param: 'żółw', ref: 'r', seq: 3 })), { channel: 'c', cmd: 'x', param: 'żółw', ref: 'r', seq: 3 })
})

t.test('channel names: 1–255 characters of [A-Za-z0-9_.:@/-]', async (t) => {
  for (const name of ['a', 'room-1', 'chat.room:lobby', 'user@example.com', 'a/b/c', 'A_Z-0.9:@/', 'c'.repeat(255)]) {
    t.ok(isValidChannel(name), name.slice(0, 40))
    t.doesNotThrow(() => assertChannel(name))
  }
  for (const name of ['', 'c'.repeat(256), 'has space', 'semi;colon', 'żółw', 'new\nline', 'a*', '#hash', 'a?b']) {
    t.notOk(isValidChannel(name), JSON.stringify(name.slice(0, 40)))
  }
  for (const value of [undefined, null, 1, {}, ['a']]) t.notOk(isValidChannel(value), String(value))
})

t.test('assertChannel throws FST_SOCKET_INVALID_CHANNEL naming the value, shortened', async (t) => {
  const rule = '(1–255 characters of A-Z a-z 0-9 _ . : @ / -, no "..")'
  t.throws(() => assertChannel('bad name'), { code: 'FST_SOCKET_INVALID_CHANNEL', statusCode: 400, message: `Invalid channel name: "bad name" ${rule}` })
  t.throws(() => assertChannel(''), { message: `Invalid channel name: "" ${rule}` })
  t.throws(() => assertChannel(' '.repeat(41)), { message: `Invalid channel name: "${' '.repeat(40)}…" ${rule}` })
  t.throws(() => assertChannel('x'.repeat(40) + '!'), { message: `Invalid channel name: "${'x'.repeat(40)}…" ${rule}` }, 'cut at 40 characters')
  t.throws(() => assertChannel('"quoted"'), { message: `Invalid channel name: "\\"quoted\\"" ${rule}` }, 'shown as JSON')
  t.throws(() => assertChannel(42), { code: 'FST_SOCKET_INVALID_CHANNEL', message: `Invalid channel name: number ${rule}` })
  t.throws(() => assertChannel(undefined), { message: `Invalid channel name: undefined ${rule}` })
})

t.test('reserved commands', async (t) => {
  t.ok(Object.isFrozen(RESERVED_COMMANDS))
  t.equal(new Set(RESERVED_COMMANDS).size, RESERVED_COMMANDS.length, 'no duplicates')
  for (const cmd of RESERVED_COMMANDS) t.ok(isReserved(cmd), cmd)
  for (const cmd of ['chat-message', 'Ping', 'ping ', 'replies', 'auth', '']) t.notOk(isReserved(cmd), JSON.stringify(cmd))
})

t.test('close codes an application may send', async (t) => {
  for (const code of [1000, 1001, 1003, 1007, 1008, 1009, 1010, 1011, 1013, 4000, 4001, 4999]) t.ok(isSendableCloseCode(code), String(code))
  for (const code of [0, 999, 1002, 1004, 1005, 1006, 1012, 1014, 1015, 2000, 3000, 3999, 5000, 4000.5, 1008.5, Number.NaN]) {
    t.notOk(isSendableCloseCode(code), String(code))
  }
})

t.test('close reasons fit in 123 bytes, cut on a character boundary', async (t) => {
  t.equal(closeReason(''), '')
  t.equal(closeReason('token expired'), 'token expired')
  t.equal(closeReason('x'.repeat(123)), 'x'.repeat(123))
  t.equal(closeReason('x'.repeat(200)), 'x'.repeat(123))
  const polish = closeReason('ż'.repeat(100))
  t.equal(polish, 'ż'.repeat(61), 'two-byte characters are not split')
  t.ok(Buffer.byteLength(polish) <= 123)
  const emoji = closeReason('x'.repeat(120) + '🐢🐢')
  t.equal(emoji, 'x'.repeat(120), 'a surrogate pair that does not fit is dropped whole')
  t.ok(Buffer.byteLength(emoji) <= 123)
  for (let pad = 0; pad < 8; pad++) {
    const reason = closeReason('x'.repeat(pad) + '🐢'.repeat(60))
    t.ok(Buffer.byteLength(reason) <= 123, `pad ${pad}: at most 123 bytes`)
    t.notMatch(reason, /[\uD800-\uDBFF]$/, `pad ${pad}: no half character at the end`)
    t.equal(Buffer.from(reason).toString(), reason, `pad ${pad}: survives UTF-8 unchanged`)
  }
})

t.test('CommandRegistry', async (t) => {
  const registry = new CommandRegistry()
  const ctx = { channel: 'room-a', ref: 'r' } as unknown as CommandContext
  registry.add('sum', {
    schema: Type.Object({ a: Type.Number(), b: Type.Number() }),
    handler: (param) => {
      const { a, b } = param as { a: number, b: number }
      return a + b
    }
  })
  registry.add('context', { handler: (_param, context) => context.channel })
  t.equal(registry.run('sum', { a: 1, b: 2 }, ctx), 3, 'a synchronous handler answers synchronously')
  t.equal(registry.run('context', undefined, ctx), 'room-a')
  t.throws(() => registry.run('sum', { a: 1 }, ctx), { code: 'FST_SOCKET_INVALID_PARAM', statusCode: 400, message: 'Invalid param for "sum": param must have required properties b' })
  t.throws(() => registry.run('sum', { a: 1, b: '2' }, ctx), { code: 'FST_SOCKET_INVALID_PARAM', message: 'Invalid param for "sum": /b must be number' })
  t.throws(() => registry.run('missing', null, ctx), { code: 'FST_SOCKET_UNKNOWN_COMMAND', statusCode: 404, message: 'Unknown command "missing"' })
  t.throws(() => registry.run('ping', null, ctx), { code: 'FST_SOCKET_UNKNOWN_COMMAND' }, 'reserved names are never in the registry')
  t.throws(() => registry.add('ping', { handler: () => null }), { code: 'FST_SOCKET_RESERVED_COMMAND' })
  t.throws(() => registry.add('sum', { handler: () => null }), { code: 'FST_SOCKET_DUPLICATE_COMMAND' })
  t.throws(() => registry.add('', { handler: () => null }), { code: 'FST_SOCKET_INVALID_OPTIONS' })
  t.throws(() => registry.add('h', { handler: null } as unknown as { handler: () => null }), { code: 'FST_SOCKET_INVALID_OPTIONS' })
})
