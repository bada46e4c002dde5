import { Compile } from 'typebox/compile'
import type { TSchema, Static } from 'typebox'
import type { FastifyBaseLogger } from 'fastify'
import { errors, firstError } from './errors.js'
import { isReserved } from './protocol.js'
import type { Connection } from './connection.js'

/** What a command handler gets beside the param. */
export interface CommandContext {
  /** The connection the message came on. */
  connection: Connection
  /** The channel the message named (the connection is a member). */
  channel: string
  /** The message's `ref`, when the client wants an answer. */
  ref: string | undefined
  /**
   * The message's `id`, when the client gave one: the same on every resend, and handled once within the dedupe
   * window. A handler that writes elsewhere can use it as that write's idempotency key.
   */
  id: string | undefined
  /** The connection's logger. */
  log: FastifyBaseLogger
}

/** The context each message's handler gets: `log` is the connection's, made only when a handler uses it. */
export class MessageContext implements CommandContext {
  readonly connection: Connection
  readonly channel: string
  readonly ref: string | undefined
  readonly id: string | undefined

  constructor (connection: Connection, channel: string, ref: string | undefined, id?: string) {
    this.connection = connection
    this.channel = channel
    this.ref = ref
    this.id = id
  }

  get log (): FastifyBaseLogger {
    return this.connection.log
  }
}

export type CommandHandler<P = unknown> = (param: P, ctx: CommandContext) => unknown

/** What `app.socket.command(cmd, definition)` takes. */
export interface CommandDefinition<S extends TSchema = TSchema> {
  /** TypeBox schema for `param`, compiled once; a message that fails it gets FST_SOCKET_INVALID_PARAM. */
  schema?: S
  handler: CommandHandler<Static<S>>
  /**
   * `false`: messages with an `id` run every time, and their answers are not kept (a read-only query, whose repeat
   * is harmless, or one with large answers). Default `true` (docs/server.md#message-dedupe).
   */
  dedupe?: boolean
}

interface Registered {
  handler: CommandHandler
  dedupe: boolean
  check: ((param: unknown) => string | null) | null
}

/** The application's inbound commands. Reserved names and duplicates are refused when they are registered. */
export class CommandRegistry {
  readonly #commands = new Map<string, Registered>()

  add (cmd: string, definition: CommandDefinition): void {
    if (typeof cmd !== 'string' || cmd.length === 0) throw new errors.FST_SOCKET_INVALID_OPTIONS('a command needs a name')
    if (isReserved(cmd)) throw new errors.FST_SOCKET_RESERVED_COMMAND(cmd)
    if (this.#commands.has(cmd)) throw new errors.FST_SOCKET_DUPLICATE_COMMAND(cmd)
    if (typeof definition?.handler !== 'function') throw new errors.FST_SOCKET_INVALID_OPTIONS(`command "${cmd}" needs a handler function`)
    if (definition.dedupe !== undefined && typeof definition.dedupe !== 'boolean') throw new errors.FST_SOCKET_INVALID_OPTIONS(`command "${cmd}": dedupe must be a boolean`)
    let check: Registered['check'] = null
    if (definition.schema !== undefined) {
      const validator = Compile(definition.schema)
      check = (param) => {
        if (validator.Check(param)) return null
        return firstError(validator, param, 'param', 'is invalid')
      }
    }
    this.#commands.set(cmd, { handler: definition.handler as CommandHandler, dedupe: definition.dedupe ?? true, check })
  }

  /** Whether messages of `cmd` with an `id` are deduped: a registered command that did not opt out. */
  dedupes (cmd: string): boolean {
    return this.#commands.get(cmd)?.dedupe ?? false
  }

  /**
   * Validates and runs one command: returns what the handler returned (a value, or the promise of one), and throws
   * the coded error the client should see. A synchronous handler is answered without a trip through promises.
   */
  run (cmd: string, param: unknown, ctx: CommandContext): unknown {
    const command = this.#commands.get(cmd)
    if (command === undefined) throw new errors.FST_SOCKET_UNKNOWN_COMMAND(cmd)
    const problem = command.check?.(param) ?? null
    if (problem !== null) throw new errors.FST_SOCKET_INVALID_PARAM(cmd, problem)
    return command.handler(param, ctx)
  }
}
