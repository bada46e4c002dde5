import type { OutboundMessage } from '../../schemas/envelope.js'
import type { ChannelBroadcast, HistorySettings, StreamPage, StreamPosition } from './broker.js'
import type { RedisClient, RunCommand } from './redis-client.js'
import { APPEND, READ } from './redis-scripts.js'
import { newEpoch } from './streams.js'

/** The publishing connection with the two history scripts defined on it. */
interface StreamRedis extends RedisClient {
  forgeAppend: (stream: string, meta: string, channel: string, epoch: string, size: number, ttl: number, metaTtl: number, message: string, head: string) => Promise<[number, string]>
  forgeRead: (stream: string, meta: string, epoch: string, metaTtl: number, sinceEpoch: string, from: number, limit: number) => Promise<[string, number, string[]]>
}

/**
 * The Redis broker's channel streams (the Broker's `append` and `read`): a Redis stream per channel,
 * `<prefix>hs:{<channel>}`, and its position, a hash, `<prefix>hm:{<channel>}`, changed by the scripts of
 * redis-scripts.ts. What the memory broker's `Streams` keeps in process.
 *
 * @example
 * const streams = new RedisStreams(pub, 'forge-socket:', run)
 * const { epoch, seq } = await streams.append({ type: 'channel', origin: 'node-a', channel, message }, settings)
 */
export class RedisStreams {
  readonly #redis: StreamRedis
  readonly #prefix: string
  readonly #run: RunCommand

  constructor (redis: RedisClient, prefix: string, run: RunCommand) {
    this.#redis = redis as StreamRedis
    this.#prefix = prefix
    this.#run = run
    redis.defineCommand('forgeAppend', { numberOfKeys: 2, lua: APPEND })
    redis.defineCommand('forgeRead', { numberOfKeys: 2, lua: READ })
  }

  async append (message: ChannelBroadcast, settings: HistorySettings): Promise<StreamPosition> {
    const { message: outbound, epoch: _epoch, ...head } = message
    const { seq: _seq, ...stored } = outbound
    // The broadcast's JSON is cut before its message, which the script puts in once it is stored: the message
    // travels to Redis once.
    const open = `${JSON.stringify(head).slice(0, -1)},"message":`
    const [seq, epoch] = await this.#run(() => this.#redis.forgeAppend(
      this.#key('hs', message.channel), this.#key('hm', message.channel), `${this.#prefix}ch:${message.channel}`,
      newEpoch(), settings.size, settings.ttl, settings.metaTtl, JSON.stringify(stored), open))
    return { epoch, seq }
  }

  async read (channel: string, since: StreamPosition | undefined, limit: number, settings: HistorySettings): Promise<StreamPage> {
    return await this.#run(async () => {
      const [epoch, seq, flat] = await this.#redis.forgeRead(this.#key('hs', channel), this.#key('hm', channel),
        newEpoch(), settings.metaTtl, since?.epoch ?? '', (since?.seq ?? 0) + 1, limit)
      const messages: OutboundMessage[] = []
      for (let i = 0; i + 1 < flat.length; i += 2) {
        // Entry ids are "<seq>-0".
        messages.push(Object.assign(JSON.parse(flat[i + 1] as string) as OutboundMessage, { seq: Number.parseInt(flat[i] as string, 10) }))
      }
      return { epoch, seq, messages }
    })
  }

  /** The channel's stream (`hs`) or meta (`hm`) key. */
  #key (kind: 'hs' | 'hm', channel: string): string {
    return `${this.#prefix}${kind}:{${channel}}`
  }
}

/** The channel message an append published: `h:<seq>:<epoch>:<JSON of the broadcast, its message without seq>`. */
export function appended (payload: string): ChannelBroadcast {
  const seqEnd = payload.indexOf(':', 2)
  const epochEnd = payload.indexOf(':', seqEnd + 1)
  if (seqEnd === -1 || epochEnd === -1) throw new Error('a history message without its seq and epoch')
  const message = JSON.parse(payload.slice(epochEnd + 1)) as ChannelBroadcast
  message.message.seq = Number(payload.slice(2, seqEnd))
  message.epoch = payload.slice(seqEnd + 1, epochEnd)
  return message
}
