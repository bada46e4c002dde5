import type { Broker, BrokerHealth, BrokerHost, BrokerMessage } from '../../plugin.js'

/** What a custom broker was asked, in order. */
export type Call = ['start', string] | ['publish', BrokerMessage] | ['subscribe', string] | ['unsubscribe', string] | ['close']

/** A broker that records every call and can be told to fail; `deliver` is the host's, once started. */
export class RecordingBroker implements Broker {
  readonly calls: Call[] = []
  /** The host it was started with. */
  host: BrokerHost | null = null
  health: BrokerHealth = 'ok'
  deliver: (message: BrokerMessage) => void = () => {}
  publishFails: 'no' | 'throw' | 'reject' = 'no'
  /** Channels whose subscribe rejects. */
  readonly failing = new Set<string>()
  /** Channels whose unsubscribe rejects. */
  readonly failingUnsubscribe = new Set<string>()

  async start (host: BrokerHost): Promise<void> {
    this.calls.push(['start', host.nodeId])
    this.host = host
    this.deliver = host.deliver
  }

  publish (message: BrokerMessage): Promise<void> | void {
    this.calls.push(['publish', message])
    if (this.publishFails === 'throw') throw new Error('broker down')
    if (this.publishFails === 'reject') return Promise.reject(new Error('broker down'))
  }

  async subscribe (channel: string): Promise<void> {
    this.calls.push(['subscribe', channel])
    if (this.failing.has(channel)) throw new Error('subscribe failed')
  }

  async unsubscribe (channel: string): Promise<void> {
    this.calls.push(['unsubscribe', channel])
    if (this.failingUnsubscribe.has(channel)) throw new Error('unsubscribe failed')
  }

  async close (): Promise<void> {
    this.calls.push(['close'])
  }

  /** The calls of one kind, without the others. */
  only<K extends Call[0]> (kind: K): Array<Extract<Call, [K, ...unknown[]]>> {
    return this.calls.filter((c): c is Extract<Call, [K, ...unknown[]]> => c[0] === kind)
  }
}
