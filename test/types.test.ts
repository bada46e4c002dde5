// Compile-time checks: `npm test` runs `tsc --noEmit` over this file, so every `@ts-expect-error` below must be a
// real type error (a user's mistake the types catch) or the type-check fails. The runtime part checks the same
// calls behave as typed.
import t from 'tap'
import Type from 'typebox'
import { build, listen, sign, connect } from './helpers/server.js'
import type { PageState, UpgradeTicket } from '../plugin.js'

t.test('the public API is typed', async (t) => {
  const app = await build()
  t.after(() => app.close())

  app.socket.command('typed', {
    schema: Type.Object({ n: Type.Number() }),
    handler: (param) => {
      const n: number = param.n
      // @ts-expect-error param is typed from the schema: there is no `m`
      void param.m
      return n * 2
    }
  })

  // @ts-expect-error a message needs a cmd
  t.throws(() => app.socket.broadcast('room', { param: 1 }), { code: 'FST_SOCKET_INVALID_MESSAGE' })
  // @ts-expect-error channels are strings
  t.throws(() => app.socket.broadcast(42, { cmd: 'x' }), { code: 'FST_SOCKET_INVALID_CHANNEL' })

  app.get('/ws/:room', app.socket.act('typed', (_app, ps: PageState): UpgradeTicket => {
    const room: string = ps.requestString('room', true)
    // @ts-expect-error without `required`, the value may be undefined
    const maybe: string = ps.requestString('other')
    void maybe
    return ps.upgrade(`room-${room}`)
  }))
  const base = await listen(app)
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  const reply = await client.request('room-a', 'typed', { n: 21 })
  t.same(reply.param, 42)
  client.close()
  await client.closed
})
