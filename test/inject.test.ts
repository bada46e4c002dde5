import t, { type Test } from 'tap'
import { once } from 'node:events'
import type WebSocket from 'ws'
import type { FastifyInstance } from 'fastify'
import { build, room, sign } from './helpers/server.js'
import type { OutboundMessage } from '../plugin.js'

// @fastify/websocket's in-process harness, `app.injectWS`, against act routes: there is no TCP socket under it, so
// every frame (the upgrade's `connected`, replies, broadcasts) goes through ws.

/**
 * Opens an injected socket whose messages are collected from the first one on (injectWS resolves after `open`);
 * `next(cmd)` rejects if the socket closes before such a message comes.
 */
async function inject (app: FastifyInstance, path: string, token?: string): Promise<{ ws: WebSocket, next: (cmd: string) => Promise<OutboundMessage> }> {
  const seen: OutboundMessage[] = []
  const waiters = new Set<{ cmd: string, resolve: (m: OutboundMessage) => void, reject: (err: Error) => void }>()
  const ws = await app.injectWS(path, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } }, {
    onInit: (ws: WebSocket) => {
      ws.on('message', (data) => {
        const message = JSON.parse(data.toString()) as OutboundMessage
        seen.push(message)
        for (const waiter of waiters) {
          if (waiter.cmd !== message.cmd) continue
          waiters.delete(waiter)
          waiter.resolve(message)
        }
      })
      ws.on('close', (code) => {
        for (const waiter of waiters) waiter.reject(new Error(`closed with ${code} before a "${waiter.cmd}" came`))
        waiters.clear()
      })
    }
  })
  const next = async (cmd: string): Promise<OutboundMessage> => {
    const index = seen.findIndex((m) => m.cmd === cmd)
    if (index !== -1) return seen.splice(index, 1)[0] as OutboundMessage
    return await new Promise((resolve, reject) => waiters.add({ cmd, resolve, reject }))
  }
  return { ws, next }
}

async function app (t: Test): Promise<FastifyInstance> {
  const app = await build()
  t.after(() => app.close())
  room(app)
  app.socket.command('echo', { handler: (param) => param })
  await app.ready()
  return app
}

t.test('an injected socket on an act route is connected, answered, and reached by broadcasts', async (t) => {
  const server = await app(t)
  const { ws, next } = await inject(server, '/ws/a', sign({ sub: 'ann' }))
  const connected = await next('connected')
  t.equal(connected.channel, 'room-a')
  ws.send(JSON.stringify({ channel: 'room-a', cmd: 'echo', param: { n: 1 }, ref: 'r1' }))
  t.same((await next('reply')).param, { n: 1 })
  t.equal(server.socket.broadcast('room-a', { cmd: 'news', param: 'hi' }), 1)
  t.same((await next('news')).param, 'hi')
  t.same(server.socket.connections('room-a').map((c) => c.profileId), ['ann'])
  // The harness's in-process stream never reports a clean close to the server's side (docs/server.md, Testing):
  // a test ends its sockets with terminate(), and app.close() then drains them at once.
  ws.terminate()
  await once(ws, 'close')
})

t.test('an injected upgrade is refused before it opens, as over TCP', async (t) => {
  const server = await app(t)
  await t.rejects(server.injectWS('/ws/a'), /Unexpected server response: 401/)
  await t.rejects(server.injectWS('/ws/a', { headers: { authorization: 'Bearer nope' } }), /Unexpected server response: 401/)
})
