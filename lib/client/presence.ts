import type { Message, PresenceMember } from './types.js'

/** Who joined and who left a channel, whichever form the server announced it in. */
export interface PresenceChanges {
  channel: string
  joins: PresenceMember[]
  leaves: PresenceMember[]
}

/**
 * Reads a presence announcement in any of its forms: `user-joined`, `user-left` (one user each) or `presence-diff`
 * (every change of one interval, in channels whose presence mode is `diff`). Anything else is null, so one handler
 * serves every channel whatever its mode.
 *
 * @example
 * socket.onMessage = (message) => {
 *   const changes = presenceChanges(message)
 *   if (changes !== null) for (const { user } of changes.joins) online.add(user)
 * }
 */
export function presenceChanges (message: Message): PresenceChanges | null {
  const { channel, cmd } = message
  const param = message.param as Partial<Record<'joins' | 'leaves', unknown>> | null
  switch (cmd) {
    case 'user-joined':
      return isMember(param) ? { channel, joins: [param], leaves: [] } : null
    case 'user-left':
      return isMember(param) ? { channel, joins: [], leaves: [param] } : null
    case 'presence-diff':
      if (param === null || typeof param !== 'object') return null
      return { channel, joins: members(param.joins), leaves: members(param.leaves) }
    default:
      return null
  }
}

function isMember (value: unknown): value is PresenceMember {
  return typeof value === 'object' && value !== null && typeof (value as PresenceMember).user === 'string'
}

function members (list: unknown): PresenceMember[] {
  return Array.isArray(list) ? list.filter(isMember) : []
}
