import { errors } from './errors.js'
import { answerFrame, errorAnswer, isThenable, replyAnswer, sendError } from './answers.js'
import { ConnectionState, type Connection } from './connection.js'
import type { Broker, CommandRecord } from './broker/broker.js'
import type { InboundMessage } from '../schemas/envelope.js'
import type { DedupeSettings } from './options.js'

/** Where the record of handled commands lives: the broker's (shared by every node), or this process's. */
export type CommandStore = Required<Pick<Broker, 'claimCommand' | 'commandRecord' | 'finishCommand' | 'releaseCommand'>>

/** What the in-process record reports (`app.socket.status().dedupe`). */
export interface DedupeCounts {
  /** Records kept now (pending and done). */
  entries: number
  /** Their size, approximately (keys and answers, UTF-16 code units counted as bytes). */
  bytes: number
  /** Records dropped to stay within `maxEntries` / `maxBytes` before their window ended. */
  evictions: number
}

interface Entry {
  key: string
  /** The answer's JSON, or null while the first run is under way. */
  answer: string | null
  expires: number
  bytes: number
}

/** The fixed cost of one entry beside its key and answer (the Map's slot, the Entry, its place in the order), for the byte bound. */
const ENTRY_OVERHEAD = 96

/**
 * The record of handled commands in this process: what a single node keeps (the memory broker). A Map for the
 * look-ups, and beside it the entries in the order they were written (an array read from a moving head: a Map's
 * own order would do, but V8 leaves a deleted entry's slot in place until the table is rebuilt, and a walk from
 * the head over those slots made each write O(n)). Expired entries are dropped from the head as new ones come,
 * and when a bound is reached the oldest go first, counted in `evictions`. Every call is synchronous.
 */
export class LocalCommandStore implements CommandStore {
  readonly #entries = new Map<string, Entry>()
  readonly #maxEntries: number
  readonly #maxBytes: number
  readonly #now: () => number
  /** Entries by the time they were written; one no longer in the Map (rewritten, released) is skipped. */
  #order: Entry[] = []
  #head = 0
  #bytes = 0
  #evictions = 0

  constructor (settings: Pick<DedupeSettings, 'maxEntries' | 'maxBytes'>, now: () => number = Date.now) {
    this.#maxEntries = settings.maxEntries
    this.#maxBytes = settings.maxBytes
    this.#now = now
  }

  get counts (): DedupeCounts {
    return { entries: this.#entries.size, bytes: this.#bytes, evictions: this.#evictions }
  }

  claimCommand (scope: string, id: string, lease: number): CommandRecord | null {
    const key = keyOf(scope, id)
    const found = this.#get(key)
    if (found !== null) return found
    this.#put(key, null, lease)
    return null
  }

  commandRecord (scope: string, id: string): CommandRecord | null {
    return this.#get(keyOf(scope, id))
  }

  finishCommand (scope: string, id: string, answer: string, window: number): void {
    const key = keyOf(scope, id)
    const entry = this.#entries.get(key)
    if (entry === undefined || entry.answer !== null) return this.#put(key, answer, window)
    // The pending entry becomes the answer where it is in the order: one object per id, not two. Entries behind it
    // with an earlier end are then dropped when it is (or when a bound is reached); each is checked when read.
    const bytes = ENTRY_OVERHEAD + key.length + answer.length
    this.#bytes += bytes - entry.bytes
    entry.answer = answer
    entry.bytes = bytes
    entry.expires = this.#now() + window
    this.#bound()
  }

  releaseCommand (scope: string, id: string): void {
    const entry = this.#entries.get(keyOf(scope, id))
    if (entry !== undefined && entry.answer === null) this.#delete(entry)
  }

  #get (key: string): CommandRecord | null {
    const entry = this.#entries.get(key)
    if (entry === undefined) return null
    if (entry.expires <= this.#now()) {
      this.#delete(entry)
      return null
    }
    return entry.answer === null ? PENDING : { state: 'done', answer: entry.answer }
  }

  /** Writes a record at the end of the order, after dropping the expired ones at its head, then keeps to the bounds. */
  #put (key: string, answer: string | null, ttl: number): void {
    const now = this.#now()
    const old = this.#entries.get(key)
    if (old !== undefined) this.#delete(old)
    for (let oldest = this.#oldest(); oldest !== undefined && oldest.expires <= now; oldest = this.#oldest()) this.#delete(oldest)
    const entry: Entry = { key, answer, expires: now + ttl, bytes: ENTRY_OVERHEAD + key.length + (answer?.length ?? 0) }
    this.#entries.set(key, entry)
    this.#order.push(entry)
    this.#bytes += entry.bytes
    this.#bound()
  }

  /** Drops the oldest entries while a bound is passed, and the order's dead head once it is half the array. */
  #bound (): void {
    while (this.#entries.size > this.#maxEntries || this.#bytes > this.#maxBytes) {
      this.#delete(this.#oldest() as Entry)
      this.#evictions++
    }
    // Each entry is copied once on average.
    if (this.#head > 1024 && this.#head * 2 > this.#order.length) {
      this.#order = this.#order.slice(this.#head)
      this.#head = 0
    }
  }

  /** The oldest entry still in the Map (the head of the order, past those that are not). */
  #oldest (): Entry | undefined {
    const order = this.#order
    while (this.#head < order.length) {
      const entry = order[this.#head] as Entry
      if (this.#entries.get(entry.key) === entry) return entry
      this.#head++
    }
    return undefined
  }

  #delete (entry: Entry): void {
    this.#entries.delete(entry.key)
    this.#bytes -= entry.bytes
  }
}

const PENDING: CommandRecord = Object.freeze({ state: 'pending' })

/** One key per (scope, id), unambiguous whatever either holds. */
function keyOf (scope: string, id: string): string {
  return `${scope.length}:${scope}${id}`
}

/**
 * The scope of a connection's ids: its user (the token's subject), so a client that reconnects, to any node, finds
 * its record, and one user can't suppress another's id; an anonymous connection's own id otherwise.
 */
export function scopeOf (conn: Connection): string {
  const user = conn.profileId
  return user === null ? `c:${conn.id}` : `u:${user}`
}

/** A duplicate that arrived while its first run was under way on this node: answered when that run is. */
interface Waiter {
  conn: Connection
  message: InboundMessage & { id: string }
  /** Runs the repeat itself, should it turn out to be the first (the record was gone when it looked again). */
  run: () => unknown
}

interface InFlight {
  waiters: Waiter[]
  /** The claim failed, and is being taken back: repeats are refused (FST_SOCKET_DEDUPE_UNAVAILABLE) meanwhile. */
  refusing?: true
  /** Ends the wait after the lease: the waiters are told FST_SOCKET_IN_PROGRESS. */
  timer: NodeJS.Timeout | undefined
}

/** How a duplicate whose first run is on another node polls the record: these delays (ms), the last repeated. */
const POLL_DELAYS = [10, 25, 50, 100, 200, 400] as const

const NOT_KEPT = 'the answer of a command with an id could not be kept: a retry after the lease runs it again'

/**
 * Client command dedupe: each `(scope, id)` is run at most once within the window, on whichever node it arrives.
 *
 * - First arrival: the record is claimed (pending, for `lease` ms), the command runs, and its answer is kept for
 *   `window` ms, then sent. A run that throws deletes the record (a retry runs again).
 * - A duplicate is not run. With the record done, it gets the kept answer with its own `ref` and `dup: true`. While
 *   the first run is under way on this node, it waits for that run's answer (an error included). Under way on another
 *   node, it polls the record. Still pending after `lease`: FST_SOCKET_IN_PROGRESS (retriable).
 * - The store failing (Redis away): FST_SOCKET_DEDUPE_UNAVAILABLE (retriable), and nothing runs.
 */
export class Dedupe {
  readonly #settings: Readonly<DedupeSettings>
  readonly #store: CommandStore
  readonly #local: LocalCommandStore | null
  readonly #inFlight = new Map<string, InFlight>()

  /** The record is the broker's when it keeps one (Redis: shared by every node), else this process's. */
  constructor (settings: Readonly<DedupeSettings>, broker: Broker) {
    this.#settings = settings
    if (hasCommandStore(broker)) {
      this.#local = null
      this.#store = broker
    } else {
      this.#local = new LocalCommandStore(settings)
      this.#store = this.#local
    }
  }

  /** The in-process record's counts; null when the broker keeps the record. */
  get counts (): DedupeCounts | null {
    return this.#local?.counts ?? null
  }

  /** What `connected` tells the client: how long its ids are remembered, and whether beyond this connection. */
  advertised (conn: Connection): { window: number, scope: 'user' | 'connection' } {
    return { window: this.#settings.window, scope: conn.profileId === null ? 'connection' : 'user' }
  }

  /**
   * Handles a message with an `id`: runs it through `run` (its value or promise) unless the record says it ran,
   * and answers it. `run` throwing, or its promise rejecting, is a failed run.
   */
  handle (conn: Connection, message: InboundMessage & { id: string }, run: () => unknown): void {
    const scope = scopeOf(conn)
    const key = keyOf(scope, message.id)
    const inFlight = this.#inFlight.get(key)
    if (inFlight !== undefined) return this.#wait(inFlight, { conn, message, run })
    let claimed: CommandRecord | null | PromiseLike<CommandRecord | null>
    try {
      claimed = this.#store.claimCommand(scope, message.id, this.#settings.lease)
    } catch (err) {
      return this.#unavailable(conn, message, err)
    }
    // Answered at once (the in-process record): nothing else can arrive before the run, which goes in flight only
    // if it does not answer at once either.
    if (!isThenable(claimed)) {
      if (claimed === null) return this.#run(conn, message, scope, key, run)
      return this.#existing(conn, message, scope, claimed, run)
    }
    // In flight from here, so that a duplicate arriving while the claim is answered waits for this run.
    const mine = this.#underWay(key)
    claimed.then((record) => this.#claimed(conn, message, scope, key, mine, record, run), (err: unknown) => {
      const waiters = [{ conn, message, run }, ...mine.waiters]
      mine.waiters = []
      for (const waiter of waiters) this.#unavailable(waiter.conn, waiter.message, err)
      if ((err as { notSent?: boolean }).notSent === true) return this.#settle(key, mine)
      // Timed out: the claim may reach the store yet and hold the id for a whole lease. It is taken back (only
      // while it is this node's and pending); repeats meanwhile are refused like this one.
      mine.refusing = true
      const settle = (): void => { this.#settle(key, mine) }
      Promise.resolve().then(() => this.#store.releaseCommand(scope, message.id)).then(settle, settle)
    })
  }

  /** The claim's answer: null, this run is the first; a record, the message (and those that waited) are duplicates. */
  #claimed (conn: Connection, message: InboundMessage & { id: string }, scope: string, key: string, mine: InFlight, record: CommandRecord | null, run: () => unknown): void {
    if (record === null) return this.#run(conn, message, scope, key, run)
    this.#settle(key, mine)
    for (const waiter of [{ conn, message, run }, ...mine.waiters]) this.#existing(waiter.conn, waiter.message, scope, record, waiter.run)
  }

  /** The first run: its answer kept, then sent to it and to the duplicates that waited. */
  #run (conn: Connection, message: InboundMessage & { id: string }, scope: string, key: string, run: () => unknown): void {
    conn.observer.dedupe('run')
    let result: unknown
    try {
      result = run()
    } catch (err) {
      return this.#failed(conn, message, scope, key, err)
    }
    if (isThenable(result)) {
      this.#underWay(key)
      result.then((value) => this.#succeeded(conn, message, scope, key, value), (err: unknown) => this.#failed(conn, message, scope, key, err))
    } else {
      this.#succeeded(conn, message, scope, key, result)
    }
  }

  #succeeded (conn: Connection, message: InboundMessage & { id: string }, scope: string, key: string, value: unknown): void {
    let answer: string
    try {
      answer = replyAnswer(value)
    } catch (err) {
      // A value JSON can't carry (a BigInt, a cycle): the run failed as far as the client can tell.
      return this.#failed(conn, message, scope, key, err)
    }
    const kept = answer.length <= this.#settings.maxAnswerBytes
      ? answer
      : errorAnswer(new errors.FST_SOCKET_DUPLICATE(message.id, String(answer.length)))
    const done = (): void => {
      if (message.ref !== undefined) conn.sendFrame(answerFrame(message.channel, answer, message.ref, false))
      for (const waiter of this.#settle(key)) sendAnswer(waiter.conn, waiter.message, kept)
    }
    let stored: PromiseLike<void> | void
    try {
      stored = this.#store.finishCommand(scope, message.id, kept, this.#settings.window)
    } catch (err) {
      conn.log.error({ err }, NOT_KEPT)
      return done()
    }
    // The answer goes out once it is kept: a client that lost it and retries (on any node) then finds it.
    if (!isThenable(stored)) return done()
    this.#underWay(key)
    stored.then(done, (err: unknown) => {
      conn.log.error({ err }, NOT_KEPT)
      done()
    })
  }

  /** A failed run keeps no record (a retry runs again); it and the duplicates that waited for it get its error. */
  #failed (conn: Connection, message: InboundMessage & { id: string }, scope: string, key: string, err: unknown): void {
    const answer = sendError(conn, message.channel, message.ref, err)
    for (const waiter of this.#settle(key)) sendAnswer(waiter.conn, waiter.message, answer)
    const unreleased = (cause: unknown): void => conn.log.error({ err: cause }, 'the record of a failed command could not be deleted: a retry waits for its lease')
    try {
      const released = this.#store.releaseCommand(scope, message.id)
      if (isThenable(released)) released.then(undefined, unreleased)
    } catch (cause) {
      unreleased(cause)
    }
  }

  /** The record was there: answered from it when done, else waited for (polling: the run is on another node). */
  #existing (conn: Connection, message: InboundMessage & { id: string }, scope: string, record: CommandRecord, run: () => unknown): void {
    if (record.state === 'done') return sendAnswer(conn, message, record.answer)
    const deadline = Date.now() + this.#settings.lease
    let attempt = 0
    // The last look is at the deadline itself: a record whose lease ended by then (its node died) is this one's to run.
    const poll = (): void => {
      const left = deadline - Date.now()
      if (left <= 0) return sendAnswer(conn, message, inProgress(message.id), 'in_progress')
      setTimeout(() => {
        if (conn.state === ConnectionState.CLOSED) return
        Promise.resolve().then(() => this.#store.commandRecord(scope, message.id)).then((found) => {
          // Gone: the first run failed (or its node died and its lease ended): this one may run it.
          if (found === null) return this.handle(conn, message, run)
          if (found.state === 'done') return sendAnswer(conn, message, found.answer)
          poll()
        }, (err: unknown) => this.#unavailable(conn, message, err))
      }, Math.min(left, POLL_DELAYS[Math.min(attempt++, POLL_DELAYS.length - 1)] as number)).unref()
    }
    poll()
  }

  /** A duplicate of a run under way on this node: answered with that run's answer, or IN_PROGRESS after the lease. */
  #wait (inFlight: InFlight, waiter: Waiter): void {
    if (inFlight.refusing === true) return this.#unavailable(waiter.conn, waiter.message, new Error('the claim of this id is being taken back'))
    inFlight.waiters.push(waiter)
    inFlight.timer ??= setTimeout(() => {
      const waiters = inFlight.waiters
      inFlight.waiters = []
      inFlight.timer = undefined
      for (const late of waiters) sendAnswer(late.conn, late.message, inProgress(late.message.id), 'in_progress')
    }, this.#settings.lease).unref()
  }

  /** Marks the run of `key` as under way (once): repeats that arrive until it answers wait for it. */
  #underWay (key: string): InFlight {
    let inFlight = this.#inFlight.get(key)
    if (inFlight === undefined) {
      inFlight = { waiters: [], timer: undefined }
      this.#inFlight.set(key, inFlight)
    }
    return inFlight
  }

  /** The run under way for `key` is over: its waiters, to be answered. */
  #settle (key: string, inFlight = this.#inFlight.get(key)): Waiter[] {
    if (inFlight === undefined) return []
    if (this.#inFlight.get(key) === inFlight) this.#inFlight.delete(key)
    clearTimeout(inFlight.timer)
    return inFlight.waiters
  }

  #unavailable (conn: Connection, message: InboundMessage, err: unknown): void {
    conn.log.warn({ err }, 'the record of handled commands cannot be reached: a command with an id is refused')
    conn.observer.dedupe('unavailable')
    sendError(conn, message.channel, message.ref, new errors.FST_SOCKET_DEDUPE_UNAVAILABLE())
  }
}

function inProgress (id: string): string {
  return errorAnswer(new errors.FST_SOCKET_IN_PROGRESS(id))
}

/** A duplicate's answer: the kept one, with the duplicate's own `ref` and `dup: true` (none without a `ref`). */
function sendAnswer (conn: Connection, message: InboundMessage & { id: string }, answer: string, outcome: 'duplicate' | 'in_progress' = 'duplicate'): void {
  conn.observer.dedupe(outcome)
  conn.debug({ id: message.id }, 'a repeated message id: answered, not run')
  if (message.ref !== undefined) conn.sendFrame(answerFrame(message.channel, answer, message.ref, true))
}

function hasCommandStore (broker: Broker): broker is Broker & CommandStore {
  return typeof broker.claimCommand === 'function' && typeof broker.commandRecord === 'function' &&
    typeof broker.finishCommand === 'function' && typeof broker.releaseCommand === 'function'
}
