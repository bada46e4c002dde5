import { errors } from './errors.js'
import type { Hub } from './hub.js'
import type { BrokerHealth } from './broker/broker.js'
import type { MetricsSettings } from './options.js'
import type { DedupeOutcome, MetricsRecorder } from './observer.js'

type PromClient = typeof import('prom-client')
type Registry = import('prom-client').Registry

/** What the metrics read when they are collected: the node's counts, which the connections keep anyway. */
export interface MetricsSource {
  hub: Hub
  health: () => BrokerHealth
}

/** The node's metrics, registered on a registry: recorded through `recorder`, unregistered by `remove`. */
export interface NodeMetrics {
  recorder: MetricsRecorder
  remove: () => void
}

/** Recipients of one broadcast on this node: from one to the largest rooms. */
const RECIPIENT_BUCKETS = [0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000]
/** A broker publish, in seconds: the memory broker's microseconds to a slow Redis's tenth of a second. */
const PUBLISH_BUCKETS = [0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]

/** prom-client, loaded only when metrics are asked for (an optional peer dependency). */
async function loadPromClient (): Promise<PromClient> {
  try {
    return await import('prom-client')
  } catch (err) {
    throw new errors.FST_SOCKET_INVALID_OPTIONS(`/metrics needs prom-client installed (npm install prom-client): ${(err as Error).message}`)
  }
}

/**
 * Registers the node's metrics (docs/observability.md). Counted per connection event or per broadcast; the
 * message and byte totals, the gauges and `broker_up` are read from the node when collected, so the message path
 * pays nothing for them.
 */
export async function registerMetrics (settings: Readonly<MetricsSettings>, source: MetricsSource): Promise<NodeMetrics> {
  const client = await loadPromClient()
  const registry = (settings.registry as Registry | undefined) ?? client.register
  const prefix = settings.prefix
  const registers = [registry]
  const names: string[] = []
  const name = (suffix: string): string => {
    names.push(prefix + suffix)
    return prefix + suffix
  }
  const remove = (): void => {
    for (const metric of names) registry.removeSingleMetric(metric)
  }

  try {
    const { hub } = source
    // Totals the connections count anyway, read at collection: each counter moves by what it gained since.
    const total = (suffix: string, help: string, read: () => number): void => {
      let reported = 0
      new client.Counter({
        name: name(suffix),
        help,
        registers,
        collect () {
          const now = read()
          if (now > reported) this.inc(now - reported)
          reported = Math.max(reported, now)
        }
      })
    }
    const gauge = (suffix: string, help: string, read: () => number): void => {
      new client.Gauge({ name: name(suffix), help, registers, collect () { this.set(read()) } })
    }
    gauge('connections', 'Open WebSocket connections on this node.', () => hub.size)
    gauge('channels', 'Channels with at least one member on this node.', () => hub.counts().channels)
    gauge('broker_up', '1 while the broker reaches the other nodes, 0 while it is degraded.', () => source.health() === 'ok' ? 1 : 0)
    total('messages_received_total', 'Frames received from clients.', () => hub.counts().messagesIn)
    total('messages_sent_total', 'Messages written to clients (one per recipient).', () => hub.counts().messagesOut)
    total('bytes_received_total', 'Payload bytes received from clients.', () => hub.bytes().in)
    total('bytes_sent_total', 'Payload bytes written to clients (per recipient).', () => hub.bytes().out)

    const handshakes = new client.Counter({ name: name('handshakes_total'), help: 'Upgrade requests to act routes, by result: accepted, or the HTTP status they were refused with.', labelNames: ['result'], registers })
    const closes = new client.Counter({ name: name('closes_total'), help: 'Connections closed, by close code.', labelNames: ['code'], registers })
    const errorsSent = new client.Counter({ name: name('errors_total'), help: '`error` messages sent to clients, by code.', labelNames: ['code'], registers })
    const rateLimited = new client.Counter({ name: name('rate_limited_total'), help: 'Messages refused by the inbound rate limit (FST_SOCKET_RATE_LIMITED).', registers })
    const slowConsumers = new client.Counter({ name: name('slow_consumer_closes_total'), help: 'Connections closed as slow consumers (4008).', registers })
    const recipients = new client.Histogram({ name: name('broadcast_recipients'), help: 'Connections on this node one channel message was written to.', buckets: RECIPIENT_BUCKETS, registers })
    const publish = new client.Histogram({ name: name('broker_publish_duration_seconds'), help: 'Time a broker publish took, in seconds.', buckets: PUBLISH_BUCKETS, registers })
    const recoveries = new client.Counter({ name: name('recoveries_total'), help: 'Channel recoveries asked for (on connect or subscribe), by result: recovered, or why not.', labelNames: ['result'], registers })
    const dedupe = new client.Counter({ name: name('dedupe_total'), help: 'Client messages with an id, by outcome: run, duplicate, in_progress, unavailable.', labelNames: ['outcome'], registers })

    const recorder: MetricsRecorder = {
      handshake: (result) => { handshakes.inc({ result }) },
      closed: (code, slowConsumer) => {
        closes.inc({ code: String(code) })
        if (slowConsumer) slowConsumers.inc()
      },
      error: (code) => { errorsSent.inc({ code }) },
      rateLimited: () => { rateLimited.inc() },
      broadcast: (count) => { recipients.observe(count) },
      published: (seconds) => { publish.observe(seconds) },
      recovery: (result) => { recoveries.inc({ result }) },
      dedupe: (outcome: DedupeOutcome) => { dedupe.inc({ outcome }) }
    }
    return { recorder, remove }
  } catch (err) {
    // A name taken already (another forge-socket on the same registry, or the app's own): nothing half-registered.
    names.pop() // the one that failed to register: if its name was taken, it is someone else's
    remove()
    throw new errors.FST_SOCKET_INVALID_OPTIONS(`/metrics: ${(err as Error).message} (give each app its own registry or prefix)`)
  }
}
