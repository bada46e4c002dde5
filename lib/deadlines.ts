/** The longest delay a Node timer takes (about 24.8 days); a later deadline is waited for in steps. */
const MAX_TIMER = 2 ** 31 - 1

/** What a `Deadlines` queue keeps on each of its items: when it is due, and where it sits in the heap (-1: not queued). */
export interface Deadlined {
  deadline: number
  deadlineSlot: number
}

/**
 * Items that fall due at a time (epoch ms): a binary min-heap and one timer for the earliest, instead of a timer per
 * item (a Timeout, its closure and its list entry cost about 300 bytes each). Each item keeps its own deadline and
 * heap slot, so moving or removing one is O(log n) and nothing is allocated but the heap's array.
 *
 * @example
 * const expiries = new Deadlines<Connection>((conn) => conn.close(4001, 'token expired'))
 * expiries.set(conn, exp * 1000)
 * expiries.delete(conn)
 */
export class Deadlines<T extends Deadlined> {
  readonly #heap: T[] = []
  readonly #due: (item: T) => void
  #timer: NodeJS.Timeout | undefined
  /** When the timer fires (Infinity: no timer). */
  #armedFor = Infinity

  /** `due` is called once for each item whose deadline has passed; the item has left the queue by then. */
  constructor (due: (item: T) => void) {
    this.#due = due
  }

  get size (): number {
    return this.#heap.length
  }

  /** Queues an item, or moves it if it is queued already. */
  set (item: T, deadline: number): void {
    if (item.deadlineSlot === -1) {
      item.deadline = deadline
      item.deadlineSlot = this.#heap.length
      this.#heap.push(item)
      this.#up(item.deadlineSlot)
    } else {
      const earlier = deadline < item.deadline
      item.deadline = deadline
      if (earlier) this.#up(item.deadlineSlot)
      else this.#down(item.deadlineSlot)
    }
    this.#arm()
  }

  /** Takes an item out of the queue (nothing happens if it is not in it). */
  delete (item: T): void {
    const slot = item.deadlineSlot
    if (slot === -1) return
    item.deadlineSlot = -1
    const last = this.#heap.pop() as T
    if (last !== item) {
      this.#place(last, slot)
      this.#up(slot)
      this.#down(last.deadlineSlot)
    }
    if (this.#heap.length === 0) this.clear()
  }

  /** Empties the queue and stops its timer. */
  clear (): void {
    for (const item of this.#heap) item.deadlineSlot = -1
    this.#heap.length = 0
    clearTimeout(this.#timer)
    this.#timer = undefined
    this.#armedFor = Infinity
  }

  /** Keeps the timer on the earliest deadline. */
  #arm (): void {
    const first = this.#heap[0]
    if (first === undefined || first.deadline >= this.#armedFor) return
    clearTimeout(this.#timer)
    this.#armedFor = first.deadline
    const delay = Math.max(0, Math.min(first.deadline - Date.now(), MAX_TIMER))
    this.#timer = setTimeout(() => this.#fire(), delay).unref()
  }

  #fire (): void {
    this.#timer = undefined
    this.#armedFor = Infinity
    const now = Date.now()
    let first = this.#heap[0]
    while (first !== undefined && first.deadline <= now) {
      this.delete(first)
      this.#due(first)
      first = this.#heap[0]
    }
    this.#arm()
  }

  #place (item: T, slot: number): void {
    this.#heap[slot] = item
    item.deadlineSlot = slot
  }

  #up (slot: number): void {
    const item = this.#heap[slot] as T
    while (slot > 0) {
      const parentSlot = (slot - 1) >> 1
      const parent = this.#heap[parentSlot] as T
      if (parent.deadline <= item.deadline) break
      this.#place(parent, slot)
      slot = parentSlot
    }
    this.#place(item, slot)
  }

  #down (slot: number): void {
    const heap = this.#heap
    const item = heap[slot] as T
    const length = heap.length
    for (;;) {
      let child = 2 * slot + 1
      if (child >= length) break
      const right = heap[child + 1]
      if (right !== undefined && right.deadline < (heap[child] as T).deadline) child++
      const smaller = heap[child] as T
      if (smaller.deadline >= item.deadline) break
      this.#place(smaller, slot)
      slot = child
    }
    this.#place(item, slot)
  }
}
