import { toClientError } from './errors.js'
import { headerLength, textFrame } from './frame.js'
import type { Connection } from './connection.js'

/**
 * The answers to a client's messages, as text kept apart from the envelope: `{"cmd":"reply","param":…}` or
 * `{"cmd":"error","param":{"code":…,"message":…}}`. What the record of handled commands keeps (lib/dedupe.ts), and
 * what every `error` message is made of.
 */

/** A `reply` answer carrying `value` (null for none). Throws for a value JSON can't carry (a BigInt, a cycle). */
export function replyAnswer (value: unknown): string {
  return `{"cmd":"reply","param":${JSON.stringify(value ?? null)}}`
}

/** The `error` answer a client is given for `err`: its code, or FST_SOCKET_HANDLER_FAILED (toClientError). */
export function errorAnswer (err: unknown): string {
  const { code, message } = toClientError(err)
  return errorText(code, message)
}

function errorText (code: string, message: string): string {
  return `{"cmd":"error","param":${JSON.stringify({ code, message })}}`
}

/**
 * The frame of an answer: the envelope `{channel, cmd, param, ref?, dup?}` built around its text, so a param is
 * serialized once for the first answer and never again for its duplicates.
 */
export function answerFrame (channel: string, answer: string, ref: string | undefined, dup: boolean): Buffer {
  const tail = (ref === undefined ? '' : `,"ref":${JSON.stringify(ref)}`) + (dup ? ',"dup":true}' : '}')
  return textFrame(`{"channel":${JSON.stringify(channel)},${answer.slice(1, -1)}${tail}`)
}

/**
 * Answers a message with the coded `error` for `err` (with its `ref`, when it had one), logged as a refusal when
 * the error is the client's to see, as a failure otherwise. Returns the answer's text.
 */
export function sendError (conn: Connection, channel: string, ref: string | undefined, err: unknown): string {
  const { exposed, code, message } = toClientError(err)
  if (exposed) conn.debug({ code }, 'message refused')
  else conn.log.error({ err }, 'command handler failed')
  const answer = errorText(code, message)
  const frame = answerFrame(channel, answer, ref, false)
  conn.observer.error(conn, channel, code, frame.length - headerLength(frame))
  conn.sendFrame(frame)
  return answer
}

/** Whether a handler's answer is a promise (or any thenable) to wait for, rather than the value itself. */
export function isThenable<T> (value: T | PromiseLike<T>): value is PromiseLike<T> {
  return typeof value === 'object' && value !== null && typeof (value as { then?: unknown }).then === 'function'
}
