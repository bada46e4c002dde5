import type { CommandRecord } from './broker.js'
import type { RedisClient, RunCommand } from './redis-client.js'
import { CLAIM, RELEASE } from './redis-scripts.js'

/** The publishing connection as the record uses it: ioredis's GET and SET, and the two scripts defined on it. */
interface RecordRedis extends RedisClient {
  get: (key: string) => Promise<string | null>
  set: (key: string, value: string, expiry: 'PX', ms: number) => Promise<unknown>
  forgeClaim: (key: string, pending: string, lease: number) => Promise<string | null>
  forgeRelease: (key: string, pending: string) => Promise<number>
}

/**
 * The Redis broker's record of handled client commands (the Broker's `claimCommand` and the three after it), one
 * key per `(scope, id)`, `<prefix>cmd:{<scope>}:<id>`, that every node reads. `p<node>` while the first run is under
 * way on `node`, `d<answer>` once it answered. The hash tag keeps one scope (one user) in one Cluster slot.
 *
 * @example
 * const records = new CommandRecords(pub, 'forge-socket:', run)
 * await records.claim('node-a', 'u:ann', 'k3f.1', 6000)   // null: node-a runs the command
 */
export class CommandRecords {
  readonly #redis: RecordRedis
  readonly #prefix: string
  readonly #run: RunCommand

  constructor (redis: RedisClient, prefix: string, run: RunCommand) {
    this.#redis = redis as RecordRedis
    this.#prefix = prefix
    this.#run = run
    redis.defineCommand('forgeClaim', { numberOfKeys: 1, lua: CLAIM })
    redis.defineCommand('forgeRelease', { numberOfKeys: 1, lua: RELEASE })
  }

  /** Records the command as `node`'s, pending for `lease` ms, unless there is a record: null then, else the record. */
  async claim (node: string, scope: string, id: string, lease: number): Promise<CommandRecord | null> {
    return parse(await this.#run(() => this.#redis.forgeClaim(this.#key(scope, id), `p${node}`, lease)))
  }

  async read (scope: string, id: string): Promise<CommandRecord | null> {
    return parse(await this.#run(() => this.#redis.get(this.#key(scope, id))))
  }

  /** Replaces the record, whoever holds it, with the answer, kept `window` ms. */
  async finish (scope: string, id: string, answer: string, window: number): Promise<void> {
    await this.#run(() => this.#redis.set(this.#key(scope, id), `d${answer}`, 'PX', window))
  }

  /** Deletes the record while it is `node`'s pending one. */
  async release (node: string, scope: string, id: string): Promise<void> {
    await this.#run(() => this.#redis.forgeRelease(this.#key(scope, id), `p${node}`))
  }

  /**
   * `}` ends a hash tag, so the scope has none (nor an unescaped `%`): the first `}` ends the scope, and no scope and
   * id (chosen by the client) make another pair's key, whatever they hold.
   */
  #key (scope: string, id: string): string {
    return `${this.#prefix}cmd:{${scope.replaceAll('%', '%25').replaceAll('}', '%7D')}}:${id}`
  }
}

/** A record as the broker wrote it: `d<answer>`, or `p<node>`. */
function parse (value: string | null): CommandRecord | null {
  if (value === null) return null
  return value.startsWith('d') ? { state: 'done', answer: value.slice(1) } : { state: 'pending' }
}
