// What channel history holds per kept message: 1,000 channels of 100 messages each (~100-byte chat messages, one
// param object shared by all, as a broadcast's is by its copies), in the memory broker's streams (V8 heap, after
// a full GC) and in Redis streams (`used_memory`, on a redis-server of its own). Run by run.ts after its
// scenarios (or alone: `node --expose-gc dist/bench/history-memory.js`); prints a table and writes
// bench/results/history-memory.json.
import { mkdirSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import { Streams } from '../lib/broker/streams.js'
import { RedisBroker } from '../lib/broker/redis.js'
import { startRedis } from './processes.js'
import type { OutboundMessage } from '../schemas/envelope.js'

const CHANNELS = 1000
const SIZE = 100
const SETTINGS = { size: SIZE, ttl: 600_000, metaTtl: 6_000_000, maxRecover: 1000 }
const PARAM = { text: 'hello there, this is a chat message', from: 'ann' }

function message (channel: number): OutboundMessage {
  return { channel: `chat-room-${channel}`, cmd: 'chat-message', param: PARAM }
}

function gc (): void {
  (globalThis as { gc?: () => void }).gc?.()
}

/** Bytes of V8 heap per kept message in the memory broker's streams. */
function memoryStreams (): number {
  gc()
  const before = process.memoryUsage().heapUsed
  const streams = new Streams()
  for (let c = 0; c < CHANNELS; c++) for (let i = 0; i < SIZE; i++) streams.append(`chat-room-${c}`, message(c), SETTINGS)
  gc()
  const after = process.memoryUsage().heapUsed
  // Read once more, so the streams are alive at the measurement.
  if (streams.size !== CHANNELS) throw new Error('streams lost')
  return (after - before) / (CHANNELS * SIZE)
}

/** Bytes of Redis `used_memory` per kept message in Redis streams; null without a redis-server. */
async function redisStreams (): Promise<number | null> {
  const server = await startRedis()
  if (server === null) return null
  const { url } = server
  const admin = new Redis(url, { commandTimeout: 10_000 })
  admin.on('error', () => {})
  const broker = new RedisBroker({ redis: url, commandTimeout: 10_000 })
  try {
    await broker.start({ nodeId: 'bench', deliver: () => {}, log: console, counts: () => ({ connections: 0, channels: 0, messagesIn: 0, messagesOut: 0 }), presence: () => [] })
    const used = async (): Promise<number> => Number(/used_memory:(\d+)/.exec(await admin.info('memory'))?.[1])
    const before = await used()
    const appends: Array<Promise<unknown>> = []
    for (let c = 0; c < CHANNELS; c++) {
      for (let i = 0; i < SIZE; i++) appends.push(broker.append({ type: 'channel', origin: 'bench', channel: `chat-room-${c}`, message: message(c) }, SETTINGS))
    }
    await Promise.all(appends)
    return (await used() - before) / (CHANNELS * SIZE)
  } finally {
    await broker.close()
    admin.disconnect()
    await server.stop()
  }
}

const json = JSON.stringify({ ...message(1), seq: 1 }).length
const memory = memoryStreams()
const redis = await redisStreams()
process.stdout.write([
  '', `### Channel history: memory per kept message (${CHANNELS} channels × ${SIZE} messages of ${json} bytes of JSON, one shared param) (\`history-memory\`)`, '',
  '| store | bytes per kept message |', '|---|---|',
  `| memory broker (V8 heap; the param itself not counted: it is the broadcast's own object) | ${memory.toFixed(0)} |`,
  `| Redis stream (used_memory; the message's JSON included) | ${redis === null ? 'not run (no redis-server)' : redis.toFixed(0)} |`, ''
].join('\n'))
mkdirSync(new URL('../../bench/results/', import.meta.url), { recursive: true })
const file = fileURLToPath(new URL('../../bench/results/history-memory.json', import.meta.url))
writeFileSync(file, `${JSON.stringify({ started: new Date().toISOString(), channels: CHANNELS, size: SIZE, messageJson: json, memoryBytesPerMessage: memory, redisBytesPerMessage: redis }, null, 2)}\n`)
