// Tokens that expire during a connection: the close at exp (+ grace), and the in-band refresh that prevents it.
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import type { FastifyInstance } from 'fastify'
import { room, serve, sign, connect, type Client } from './helpers/server.js'
import type { ForgeSocketOptions } from '../plugin.js'
import { Socket } from '../lib/client/index.js'

const seconds = (): number => Math.floor(Date.now() / 1000)

/** The room route with optional auth (anonymous connections are tested too). */
async function start (t: Test, options: ForgeSocketOptions = {}): Promise<{ app: FastifyInstance, base: string }> {
  return await serve(t, options, (app) => room(app, { auth: 'optional' }))
}





async function alive (client: Client): Promise<boolean> {
  return (await client.request('room-a', 'ping', null)).cmd === 'pong'
}

t.test('auth.refresh with a fresh token for the same subject keeps the connection past the old exp', async (t) => {
  const { base } = await start(t, { auth: { expiryGrace: 0 } })
  const exp = seconds() + 2
  const refreshed = await connect(`${base}/ws/a`, sign({ sub: 'ann', exp }))
  const control = await connect(`${base}/ws/a`, sign({ sub: 'ann', exp }))
  const later = seconds() + 3600
  const reply = await refreshed.client.request('room-a', 'auth.refresh', { token: sign({ sub: 'ann', exp: later }) })
  t.same(reply, { channel: 'room-a', cmd: 'reply', param: { exp: later }, ref: reply.ref })
  t.same(await control.client.closed, { code: 4001, reason: 'token expired' }, 'the connection that did not refresh is closed at exp')
  t.ok(await alive(refreshed.client), 'the refreshed one is still open')
  refreshed.client.close()
})

t.test('auth.refresh with a token for another subject closes with 4001', async (t) => {
  const { base } = await start(t)
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  const answer = await client.request('room-a', 'auth.refresh', { token: sign({ sub: 'bob' }) })
  t.match(answer.param, { code: 'FST_SOCKET_TOKEN_INVALID' })
  t.same(await client.closed, { code: 4001, reason: 'refresh token for another subject' })
})

t.test('auth.refresh with a bad token closes with 4001', async (t) => {
  const { base } = await start(t)
  for (const token of [sign({ sub: 'ann' }, { key: 'another-secret-that-is-long-enough' }), sign({ sub: 'ann', exp: seconds() - 60 }), 'not-a-jwt']) {
    const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
    t.match((await client.request('room-a', 'auth.refresh', { token })).param, { code: /^FST_SOCKET_TOKEN_(INVALID|EXPIRED)$/ }, 'told why')
    t.same(await client.closed, { code: 4001, reason: 'refresh token refused' })
  }
})

t.test('auth.refresh without a token, or on an anonymous connection, is refused and the connection stays', async (t) => {
  const { base } = await start(t)
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  for (const param of [null, {}, { token: '' }, { token: 7 }]) {
    t.match((await client.request('room-a', 'auth.refresh', param)).param, { code: 'FST_SOCKET_BAD_REQUEST' })
  }
  t.ok(await alive(client))
  const anonymous = await connect(`${base}/ws/a`)
  t.match((await anonymous.client.request('room-a', 'auth.refresh', { token: sign({ sub: 'ann' }) })).param, { code: 'FST_SOCKET_FORBIDDEN' })
  t.ok(await alive(anonymous.client))
  client.close()
  anonymous.client.close()
})

t.test('the grace after exp: a server with a grace keeps the connection when one without has closed it', async (t) => {
  const strict = await start(t, { auth: { expiryGrace: 0 } })
  const lenient = await start(t, { auth: { expiryGrace: 60_000 } })
  const exp = seconds() + 2
  const kept = await connect(`${lenient.base}/ws/a`, sign({ sub: 'ann', exp }))
  const cut = await connect(`${strict.base}/ws/a`, sign({ sub: 'ann', exp }))
  t.equal((await cut.client.closed).code, 4001)
  t.ok(await alive(kept.client), 'still open within the grace')
  kept.client.close()
})

t.test('the client refreshes its token in band before exp', async (t) => {
  const { app, base } = await start(t, { auth: { expiryGrace: 0 } })
  const exp = seconds() + 2
  const tokens = [sign({ sub: 'ann', exp }), sign({ sub: 'ann', exp: seconds() + 3600 })]
  let calls = 0
  let refreshed!: () => void
  const refreshedOnce = new Promise<void>((resolve) => { refreshed = resolve })
  const lines: string[] = []
  const socket = new Socket({
    url: `${base}/ws/a`,
    WebSocket,
    token: () => tokens[Math.min(calls++, 1)] as string,
    refreshBefore: 1500,
    debug: true,
    logger: (line) => { lines.push(line); if (line.endsWith('token refreshed')) refreshed() }
  })
  t.after(() => socket.close())
  const control = await connect(`${base}/ws/a`, sign({ sub: 'ann', exp }))
  await refreshedOnce
  t.equal(calls, 2, 'the provider was asked once more, for the refresh')
  t.equal((await control.client.closed).code, 4001, 'a connection with the old token is closed at exp')
  t.equal(await socket.request('room-a', 'ping', null), null, 'the client is still connected')
  t.equal(socket.state, 'open')
  t.equal(app.socket.connections().length, 1)
  t.notOk(lines.some((line) => tokens.some((token) => line.includes(token))), 'no token in the debug lines')
})
