// The admin across nodes: two forge-socket nodes on a redis-server this file spawns. A disconnect asked of one
// node's admin API closes a client on the other; the status lists both nodes; the metrics say the broker is up.
import t from 'tap'
import { Registry } from 'prom-client'
import { RedisBroker, forgeSocketAdmin } from '../plugin.js'
import { until } from './helpers/cluster.js'
import { connect, idOf, serve, sign } from './helpers/server.js'
import { RedisProcess, requireRedis } from './helpers/redis.js'

const ADMIN = sign({ sub: 'root' })

if (requireRedis(t)) {
  t.test('a disconnect on node A closes a client on node B, with the code and reason', async (t) => {
    const redis = await RedisProcess.start(t)
    const registry = new Registry()
    const node = async (metrics?: Registry): Promise<{ base: string, http: string }> => {
      const { base } = await serve(t, { broker: new RedisBroker({ redis: redis.url, commandTimeout: 300, nodeTtl: 3000 }), metrics: metrics === undefined ? false : { registry: metrics } }, async (app) => {
        await app.register(forgeSocketAdmin, { prefix: '/admin', authorize: (_request, profile) => profile.id === 'root' })
      })
      return { base, http: `${base.replace(/^ws/, 'http')}/admin` }
    }
    const a = await node(registry)
    const b = await node()
    const ann = await connect(`${b.base}/ws/lobby`, sign({ sub: 'ann' }))
    const post = async (url: string, body: unknown): Promise<unknown> => await (await fetch(url, {
      method: 'POST', headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' }, body: JSON.stringify(body)
    })).json()

    // The status of either node lists both, once each has reported.
    await until(async () => {
      const status = await (await fetch(`${a.http}/api/status`, { headers: { authorization: `Bearer ${ADMIN}` } })).json() as { cluster: { nodes: unknown[] } }
      return status.cluster.nodes.length === 2
    })
    t.same(await post(`${a.http}/api/disconnect`, { id: idOf(ann.connected), code: 4000, reason: 'suspended' }), { here: false }, 'not on node A')
    t.same(await ann.client.closed, { code: 4000, reason: 'suspended' }, 'closed on node B')
    const up = (await registry.getMetricsAsJSON()).find((m) => m.name === 'forge_socket_broker_up')
    t.equal(up?.values[0]?.value, 1, 'broker_up: Redis answers')

    // Redis down: broker_up says so.
    await redis.kill()
    await until(async () => (await registry.getMetricsAsJSON()).find((m) => m.name === 'forge_socket_broker_up')?.values[0]?.value === 0)
    t.pass('broker_up is 0 while Redis is down')
  })
}
