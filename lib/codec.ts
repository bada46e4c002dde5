import { Compile } from 'typebox/compile'
import { InboundEnvelope, ServerMessage, type InboundMessage, type OutboundMessage, type ServerMessageData } from '../schemas/envelope.js'
import { CHANNEL_PATTERN } from '../schemas/options.js'
import type { FastifyError } from '@fastify/error'
import { errors, firstError } from './errors.js'

const inboundEnvelope = Compile(InboundEnvelope)
const serverMessage = Compile(ServerMessage)
const channelName = new RegExp(CHANNEL_PATTERN)

/** Keys that could reach an object's prototype if the param were ever merged into another object. */
const FORBIDDEN_KEYS: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype'])

/**
 * Decodes one text frame into an envelope. Malformed JSON, a value that is not an object, a wrong shape, nesting
 * deeper than `maxDepth` or a forbidden key is an FST_SOCKET_BAD_REQUEST error: the caller answers it and the
 * connection stays open.
 *
 * The depth and key check is one walk over the parsed value, done before anything else touches it.
 * secure-json-parse would cover `__proto__` alone and a second walk would still be needed for depth and
 * `constructor`/`prototype`, so one walk does both.
 */
export function decode (text: string, maxDepth: number): InboundMessage {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    throw new errors.FST_SOCKET_BAD_REQUEST('the frame is not valid JSON')
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new errors.FST_SOCKET_BAD_REQUEST('a message must be a JSON object')
  }
  try {
    checkStructure(value, 0, maxDepth)
  } catch (err) {
    throw withRef(err as FastifyError, value)
  }
  if (!inboundEnvelope.Check(value)) {
    throw withRef(new errors.FST_SOCKET_BAD_REQUEST(firstError(inboundEnvelope, value, 'message', 'has the wrong shape')), value)
  }
  return value
}

/** A decoding error that knows the `ref` of the message it refuses, when that much of the message was sound. */
export interface DecodeError extends FastifyError {
  ref?: string
}

/** Keeps a well-formed `ref` on the error, so a client waiting for that answer gets it even for a bad message. */
function withRef (err: DecodeError, value: object): DecodeError {
  const ref = (value as { ref?: unknown }).ref
  if (typeof ref === 'string' && ref.length > 0 && ref.length <= 64) err.ref = ref
  return err
}

/**
 * The depth and key check. Recursive, and safe to be: it never goes deeper than `maxDepth` (at most 256) before it
 * throws, whatever the input, so the stack stays small; and it allocates nothing, which matters on every message.
 * The envelope is depth 0, so `param` is level 1 and may nest maxDepth levels in all.
 */
function checkStructure (value: object, depth: number, maxDepth: number): void {
  if (depth > maxDepth) throw new errors.FST_SOCKET_BAD_REQUEST(`nesting deeper than ${maxDepth} levels`)
  if (Array.isArray(value)) {
    for (const item of value) {
      if (typeof item === 'object' && item !== null) checkStructure(item, depth + 1, maxDepth)
    }
    return
  }
  // JSON.parse makes plain objects: `for…in` sees their own keys (`__proto__` included) and nothing inherited.
  for (const key in value) {
    if (FORBIDDEN_KEYS.has(key)) throw new errors.FST_SOCKET_BAD_REQUEST(`the key "${key}" is not allowed`)
    const item = (value as Record<string, unknown>)[key]
    if (typeof item === 'object' && item !== null) checkStructure(item, depth + 1, maxDepth)
  }
}

/**
 * Checks what application code wants to send (`{ cmd, param? }`, the same `cmd` rules a client's message has):
 * FST_SOCKET_INVALID_MESSAGE otherwise.
 */
export function checkServerMessage (message: ServerMessageData): void {
  if (serverMessage.Check(message)) return
  throw new errors.FST_SOCKET_INVALID_MESSAGE(firstError(serverMessage, message, 'message', 'is invalid'))
}

/**
 * Builds the envelope of every message the server sends, so each has the same shape (`param` null when there is
 * none; `ref` only on an answer).
 *
 * @example
 * envelope('chat-room-lobby', 'reply', { saved: true }, message.ref)
 */
export function envelope (channel: string, cmd: string, param: unknown, ref?: string): OutboundMessage {
  return ref === undefined ? { channel, cmd, param: param ?? null } : { channel, cmd, param: param ?? null, ref }
}

/** Serializes an outbound message (once per broadcast; `textFrame` makes the bytes every recipient gets). */
export function encode (message: OutboundMessage): string {
  return JSON.stringify(message)
}

/** `connected`'s param on a node without history (`positions` and `recovery` come with history only). */
export interface ConnectedParam {
  connectionId: string
  channels: [string]
  dedupe?: { window: number, scope: 'user' | 'connection' }
  [key: string]: unknown
}

/**
 * The text of `connected` on a node without history: `encode(envelope(channel, 'connected', param))`, put together
 * by hand, since every connection gets one (JSON.stringify of it was 0.8 µs of a handshake, this 0.05). A valid
 * channel name and a UUID need no escaping.
 */
export function encodeConnected (channel: string, param: ConnectedParam): string {
  const dedupe = param.dedupe === undefined ? '' : `,"dedupe":{"window":${JSON.stringify(param.dedupe.window)},"scope":"${param.dedupe.scope}"}`
  return `{"channel":"${channel}","cmd":"connected","param":{"connectionId":"${param.connectionId}","channels":["${channel}"]${dedupe}}}`
}

/** Tells whether a channel name is 1–255 characters of `[A-Za-z0-9_.:@/-]`. */
export function isValidChannel (name: unknown): name is string {
  return typeof name === 'string' && channelName.test(name)
}

/** Throws FST_SOCKET_INVALID_CHANNEL unless `name` is a valid channel name. */
export function assertChannel (name: unknown): asserts name is string {
  if (!isValidChannel(name)) {
    const shown = typeof name === 'string' ? JSON.stringify(name.length > 40 ? `${name.slice(0, 40)}…` : name) : typeof name
    throw new errors.FST_SOCKET_INVALID_CHANNEL(`${shown} (1–255 characters of A-Z a-z 0-9 _ . : @ / -, no "..")`)
  }
}
