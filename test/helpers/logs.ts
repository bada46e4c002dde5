import { Writable } from 'node:stream'

/** One parsed pino line. */
export interface LogLine { level: number, msg: string, [key: string]: unknown }

/**
 * A pino destination that keeps every line and lets a test wait for one:
 * `Fastify({ logger: { level: 'info', stream: sink.stream } })`, then `await sink.next('broker publish failed')`.
 */
export class LogSink {
  readonly lines: LogLine[] = []
  readonly stream: Writable
  #waiters: Array<{ match: (line: LogLine) => boolean, resolve: (line: LogLine) => void }> = []

  constructor () {
    this.stream = new Writable({
      write: (chunk: Buffer, _encoding, done) => {
        for (const text of chunk.toString().split('\n')) {
          if (text.length > 0) this.#push(JSON.parse(text) as LogLine)
        }
        done()
      }
    })
  }

  /** Resolves with the first line (already written or to come) whose `msg` is `match`, or for which `match` holds. */
  next (match: string | ((line: LogLine) => boolean)): Promise<LogLine> {
    const fn = typeof match === 'string' ? (line: LogLine) => line.msg === match : match
    const seen = this.lines.find(fn)
    if (seen !== undefined) return Promise.resolve(seen)
    return new Promise((resolve) => this.#waiters.push({ match: fn, resolve }))
  }

  #push (line: LogLine): void {
    this.lines.push(line)
    this.#waiters = this.#waiters.filter((waiter) => {
      if (!waiter.match(line)) return true
      waiter.resolve(line)
      return false
    })
  }
}
