import type { SocketError } from './errors.js'
import type { SocketOptions } from './options.js'
import type { Message, RecoveryResult, SocketState } from './types.js'

export type Listener = (message: Message) => void
export type StateListener = (state: SocketState, previous: SocketState) => void
export type RecoverListener = (channel: string, result: RecoveryResult) => void

/** Where the parts of the socket report errors and write their debug lines. */
export interface Reporter {
  report (error: SocketError): void
  log (line: string): void
}

/**
 * Everything the socket tells the application: messages to the `on(cmd)` listeners (`'*'` for every message) and
 * `onMessage`; state changes to the state listeners (the `onStateChange` option and method); how each channel with
 * history came back to the `onRecover` listeners; errors to `onError`; and, with `debug`, one line per event to the
 * logger.
 */
export class Emitter implements Reporter {
  readonly #listeners = new Map<string, Set<Listener>>()
  readonly #stateListeners = new Set<StateListener>()
  readonly #recoverListeners = new Set<RecoverListener>()
  readonly #onMessage: Listener | undefined
  readonly #onError: ((error: SocketError) => void) | undefined
  readonly #debug: boolean
  readonly #logger: (line: string) => void

  constructor (options: Pick<SocketOptions, 'onMessage' | 'onStateChange' | 'onError' | 'debug' | 'logger'>) {
    this.#onMessage = options.onMessage
    if (options.onStateChange !== undefined) this.#stateListeners.add(options.onStateChange)
    this.#onError = options.onError
    this.#debug = options.debug ?? false
    this.#logger = options.logger ?? ((line) => console.debug(line))
  }

  on (cmd: string, fn: Listener): void {
    let set = this.#listeners.get(cmd)
    if (set === undefined) this.#listeners.set(cmd, set = new Set())
    set.add(fn)
  }

  off (cmd: string, fn: Listener): void {
    this.#listeners.get(cmd)?.delete(fn)
  }

  /** Adds a state listener; returns a function that removes it. */
  onState (fn: StateListener): () => void {
    this.#stateListeners.add(fn)
    return () => { this.#stateListeners.delete(fn) }
  }

  /** Adds a recovery listener; returns a function that removes it. */
  onRecover (fn: RecoverListener): () => void {
    this.#recoverListeners.add(fn)
    return () => { this.#recoverListeners.delete(fn) }
  }

  recovered (channel: string, result: RecoveryResult): void {
    const how = result.recovered ? `replayed ${result.replayed}` : `not recovered${result.reason === undefined ? '' : ` (${result.reason})`}`
    this.log(`recover ${channel}: ${how}`)
    for (const fn of this.#recoverListeners) fn(channel, result)
  }

  /** Hands `message` to the listeners of its `cmd`, then to the `'*'` ones, then to `onMessage`. */
  emit (message: Message): void {
    for (const fn of this.#listeners.get(message.cmd) ?? []) fn(message)
    for (const fn of this.#listeners.get('*') ?? []) fn(message)
    this.#onMessage?.(message)
  }

  emitState (state: SocketState, previous: SocketState): void {
    for (const fn of this.#stateListeners) fn(state, previous)
  }

  report (error: SocketError): void {
    this.log(`error ${error.code}`)
    this.#onError?.(error)
  }

  /** One debug line (never a param or a token), when `debug` is on. */
  log (line: string): void {
    if (this.#debug) this.#logger(`[forge-socket] ${line}`)
  }
}
