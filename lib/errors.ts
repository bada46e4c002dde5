// Named imports: the emitted errors.d.ts then names `FastifyErrorConstructor`, which every moduleResolution finds
// (the default import's namespace, `createError.FastifyErrorConstructor`, is not found under Bundler).
import { createError, type FastifyError } from '@fastify/error'

/**
 * Every error forge-socket raises, in one registry. Each has a stable `FST_SOCKET_*` code and an HTTP status
 * (used when the error refuses an upgrade); those that end a connection also name the WebSocket close code.
 * The table in docs/errors.md lists them all (a test fails when one is missing there).
 */
export const errors = {
  // Register time
  FST_SOCKET_INVALID_OPTIONS: createError('FST_SOCKET_INVALID_OPTIONS', 'Invalid forge-socket options: %s', 500),
  FST_SOCKET_ALREADY_REGISTERED: createError('FST_SOCKET_ALREADY_REGISTERED', 'forge-socket is already registered on this instance', 500),
  FST_SOCKET_RESERVED_COMMAND: createError('FST_SOCKET_RESERVED_COMMAND', 'Command "%s" is reserved by the protocol and cannot be handled by the application', 500),
  FST_SOCKET_DUPLICATE_COMMAND: createError('FST_SOCKET_DUPLICATE_COMMAND', 'Command "%s" already has a handler', 500),
  FST_SOCKET_OUTSIDE_ACT: createError('FST_SOCKET_OUTSIDE_ACT', '%s can only be called from an act handler, before the upgrade (after an await, only in an async function: ps.upgrade works in any)', 500),

  // Refusals before the upgrade (plain HTTP)
  FST_SOCKET_UPGRADE_REQUIRED: createError('FST_SOCKET_UPGRADE_REQUIRED', 'This route only accepts WebSocket upgrades', 426),
  FST_SOCKET_NO_ROUTE: createError('FST_SOCKET_NO_ROUTE', 'No WebSocket route at %s:%s', 404),
  FST_SOCKET_TOKEN_MISSING: createError('FST_SOCKET_TOKEN_MISSING', 'No authorization token was found', 401),
  FST_SOCKET_TOKEN_INVALID: createError('FST_SOCKET_TOKEN_INVALID', 'Authorization token is invalid: %s', 401),
  FST_SOCKET_TOKEN_EXPIRED: createError('FST_SOCKET_TOKEN_EXPIRED', 'Authorization token expired', 401),
  FST_SOCKET_AUTH_UNAVAILABLE: createError('FST_SOCKET_AUTH_UNAVAILABLE', 'Tokens cannot be verified right now', 503),
  FST_SOCKET_FORBIDDEN: createError('FST_SOCKET_FORBIDDEN', 'Forbidden: %s', 403),
  FST_SOCKET_ORIGIN_FORBIDDEN: createError('FST_SOCKET_ORIGIN_FORBIDDEN', 'Origin "%s" is not allowed', 403),
  FST_SOCKET_NOT_UPGRADED: createError('FST_SOCKET_NOT_UPGRADED', 'The act handler "%s" did not upgrade the connection', 403),
  FST_SOCKET_MISSING_PARAMETER: createError('FST_SOCKET_MISSING_PARAMETER', 'Missing required parameter "%s"', 400),
  FST_SOCKET_BAD_PROTOCOL: createError('FST_SOCKET_BAD_PROTOCOL', 'Sec-WebSocket-Protocol must offer "forge.v1" when it carries a bearer token', 400),
  FST_SOCKET_SHUTTING_DOWN: createError('FST_SOCKET_SHUTTING_DOWN', 'The server is shutting down', 503),
  FST_SOCKET_TOO_MANY_CONNECTIONS: createError('FST_SOCKET_TOO_MANY_CONNECTIONS', 'Too many connections for this %s', 429),
  FST_SOCKET_CONNECTION_RATE_LIMITED: createError('FST_SOCKET_CONNECTION_RATE_LIMITED', 'Too many new connections from this %s: try again later', 429),

  // Messages on an open connection (sent as `error` messages; the connection stays open)
  FST_SOCKET_BAD_REQUEST: createError('FST_SOCKET_BAD_REQUEST', 'Bad request: %s', 400),
  FST_SOCKET_INVALID_PARAM: createError('FST_SOCKET_INVALID_PARAM', 'Invalid param for "%s": %s', 400),
  FST_SOCKET_INVALID_CHANNEL: createError('FST_SOCKET_INVALID_CHANNEL', 'Invalid channel name: %s', 400),
  FST_SOCKET_UNKNOWN_COMMAND: createError('FST_SOCKET_UNKNOWN_COMMAND', 'Unknown command "%s"', 404),
  FST_SOCKET_NOT_SUBSCRIBED: createError('FST_SOCKET_NOT_SUBSCRIBED', 'This connection is not a member of channel "%s"', 403),
  FST_SOCKET_LIMIT_EXCEEDED: createError('FST_SOCKET_LIMIT_EXCEEDED', 'Limit exceeded: %s', 429),
  FST_SOCKET_RATE_LIMITED: createError('FST_SOCKET_RATE_LIMITED', 'Too many messages: slow down', 429),
  FST_SOCKET_HANDLER_FAILED: createError('FST_SOCKET_HANDLER_FAILED', 'The command handler failed', 500),
  // Commands with an `id` (lib/dedupe.ts): the first two are retriable, with the same id
  FST_SOCKET_IN_PROGRESS: createError('FST_SOCKET_IN_PROGRESS', 'Message "%s" is still being handled: try it again later with the same id', 409),
  FST_SOCKET_DEDUPE_UNAVAILABLE: createError('FST_SOCKET_DEDUPE_UNAVAILABLE', 'Messages with an id cannot be checked for duplicates right now: try again later with the same id', 503),
  FST_SOCKET_DUPLICATE: createError('FST_SOCKET_DUPLICATE', 'Message "%s" was handled already; its answer (%s bytes) was too large to keep', 409),

  FST_SOCKET_BROKER_UNAVAILABLE: createError('FST_SOCKET_BROKER_UNAVAILABLE', 'The broker cannot reach the other nodes: %s', 503),

  // Server API misuse
  FST_SOCKET_INVALID_MESSAGE: createError('FST_SOCKET_INVALID_MESSAGE', 'Invalid outbound message: %s', 500),
  FST_SOCKET_INVALID_CLOSE_CODE: createError('FST_SOCKET_INVALID_CLOSE_CODE', 'Close code %s cannot be sent: use 1000, 1001, 1003, 1007-1011, 1013 or 4000-4999', 500)
} as const

export type ErrorCode = keyof typeof errors

// Close codes, named after what they mean (docs/protocol.md): one table for the server and the client, kept in the
// client's folder because the browser loads the client alone.
export { CloseCode } from './client/close-codes.js'

/**
 * Sets an upgrade refusal's `Retry-After` (whole seconds, at least 1): Fastify's error handler sends an error's
 * `headers` with its reply, and forge-socket's client waits that long before it tries again.
 */
export function withRetryAfter<E extends FastifyError> (err: E, ms: number): E {
  (err as E & { headers: Record<string, string> }).headers = { 'retry-after': String(Math.max(1, Math.ceil(ms / 1000))) }
  return err
}

/** Throw from an act or command handler to refuse with 403 (before the upgrade) or a coded `error` message. */
export function forbidden (reason = 'access denied'): FastifyError {
  return new errors.FST_SOCKET_FORBIDDEN(reason)
}

/** Throw from an act or command handler to refuse with 400 (before the upgrade) or a coded `error` message. */
export function badRequest (reason: string): FastifyError {
  return new errors.FST_SOCKET_BAD_REQUEST(reason)
}

/** A compiled TypeBox schema, as far as its errors go. */
interface Checked {
  Errors (value: unknown): Iterable<{ instancePath: string, message: string }>
}

/**
 * A failed check's first error as one line, for a coded error's message: `/param/text must be string`. `subject`
 * stands in for the path when the value itself is wrong; `otherwise`, for a check that reports no error.
 *
 * @example
 * if (!validator.Check(param)) throw new errors.FST_SOCKET_INVALID_PARAM(cmd, firstError(validator, param, 'param', 'is invalid'))
 */
export function firstError (checked: Checked, value: unknown, subject: string, otherwise: string): string {
  for (const { instancePath, message } of checked.Errors(value)) return `${instancePath || subject} ${message}`
  return `${subject} ${otherwise}`
}

/** The part of an error a client may see: its code and message, or a generic one for unexpected errors. */
export interface ClientError { code: string, message: string }

/**
 * Translates any thrown value into what the client is told. Errors with a code and a 4xx status (ours, or the
 * application's own @fastify/error errors) are passed through, and so is FST_SOCKET_DEDUPE_UNAVAILABLE (a 503 the
 * client retries); anything else is hidden behind FST_SOCKET_HANDLER_FAILED, so internals never leak. `exposed`
 * says which case it was, for logging.
 */
export function toClientError (err: unknown): ClientError & { exposed: boolean } {
  if (err instanceof Error) {
    const { code, statusCode } = err as FastifyError
    if (code === 'FST_SOCKET_DEDUPE_UNAVAILABLE' || (typeof code === 'string' && typeof statusCode === 'number' && statusCode >= 400 && statusCode < 500)) {
      return { code, message: err.message, exposed: true }
    }
  }
  const internal = new errors.FST_SOCKET_HANDLER_FAILED()
  return { code: internal.code, message: internal.message, exposed: false }
}
