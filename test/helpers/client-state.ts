import type { Socket, SocketState } from '../../lib/client/index.js'

/** Resolves when `socket` is in `state`: at once if it already is, else at the transition. */
export function inState (socket: Socket, state: SocketState): Promise<void> {
  if (socket.state === state) return Promise.resolve()
  return new Promise((resolve) => {
    const off = socket.onStateChange((now) => {
      if (now !== state) return
      off()
      resolve()
    })
  })
}
