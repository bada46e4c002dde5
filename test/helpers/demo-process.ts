import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createServer } from 'node:net'
import { fileURLToPath } from 'node:url'

/** The repository root, and the compiled demo that `npm start` runs. */
export const ROOT = fileURLToPath(new URL('../../', import.meta.url))
export const DEMO_SERVER = fileURLToPath(new URL('../../dist/examples/server.js', import.meta.url))

/** One pino line the demo wrote to stdout (anything that is not JSON is kept as `{ msg: text }`). */
export interface DemoLogLine { level?: number, msg?: string, [key: string]: unknown }

export interface DemoExit { code: number | null, signal: NodeJS.Signals | null }

export interface DemoProcess {
  /** `http://127.0.0.1:<port>` */
  url: string
  /** `ws://127.0.0.1:<port>` */
  wsUrl: string
  port: number
  pid: number
  /** Every line the demo logged so far (stdout), newest last. */
  logs: DemoLogLine[]
  /** Everything the demo wrote to stderr. */
  stderr: () => string
  /** Sends `signal` (default SIGKILL) unless the process has already exited, and resolves when it has. */
  kill: (signal?: NodeJS.Signals) => Promise<DemoExit>
  /** Resolves when the process exits, however that happens. */
  exited: Promise<DemoExit>
}

export interface DemoStartOptions {
  /** The port to listen on (use `freePort()`, and the same one again to restart "the same server"). */
  port: number
  /** JWT_SECRET for the demo. */
  secret: string
  /** LOG_LEVEL; at least `info`, since the start is detected by Fastify's "Server listening" line. Default `info`. */
  logLevel?: 'trace' | 'debug' | 'info'
  /** How long to wait for the "Server listening" line before giving up, in ms. Default 15000. */
  startTimeout?: number
  /** More environment for the demo (REDIS_URL, NODE_TTL). */
  env?: Record<string, string>
}

/** Children still running, killed when the test process exits however it exits (a crash, a tap timeout). */
const alive = new Set<ChildProcess>()
process.once('exit', () => {
  for (const child of alive) child.kill('SIGKILL')
})

/** A TCP port that was free a moment ago (the OS picked it); 127.0.0.1 only. */
export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      const port = typeof address === 'object' && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })
}

/**
 * Starts the compiled demo (`node dist/examples/server.js`) as a child process on 127.0.0.1:`port`, and resolves
 * once it logged "Server listening". Rejects (with the demo's output) if it exits first or takes longer than
 * `startTimeout`, having killed it. The caller owns the process: `t.after(() => demo.kill())`.
 *
 * @example
 * const port = await freePort()
 * const demo = await startDemo({ port, secret: 'test-secret' })
 * t.after(() => demo.kill())
 * await demo.kill('SIGTERM')                          // graceful: sockets closed with 1001
 * const again = await startDemo({ port, secret: 'test-secret' })   // same port, same URL
 */
/**
 * The environment without tap's coverage hooks: the demo process runs the built dist/, and its coverage (mapped
 * back to the sources) would be merged with the tests' own and skew the report.
 */
function untraced (env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([key]) => key !== 'NODE_OPTIONS' && !key.startsWith('_TAPJS_') && !key.startsWith('TAP')))
}

export async function startDemo (options: DemoStartOptions): Promise<DemoProcess> {
  if (!existsSync(DEMO_SERVER)) {
    throw new Error(`${DEMO_SERVER} is missing: run \`npm run build\` first (npm test does it in pretest)`)
  }
  const child = spawn(process.execPath, [DEMO_SERVER], {
    cwd: ROOT,
    env: {
      ...untraced(process.env),
      PORT: String(options.port),
      HOST: '127.0.0.1',
      JWT_SECRET: options.secret,
      LOG_LEVEL: options.logLevel ?? 'info',
      ...options.env
    },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  alive.add(child)

  // A spawn failure (no such executable, …) emits 'error' and no 'exit': it counts as exited too.
  let failure: Error | undefined
  const exited = new Promise<DemoExit>((resolve) => {
    const done = (exit: DemoExit): void => {
      alive.delete(child)
      resolve(exit)
    }
    child.once('exit', (code, signal) => done({ code, signal }))
    child.once('error', (err) => {
      if (child.pid !== undefined) return
      failure = err
      done({ code: null, signal: null })
    })
  })

  const logs: DemoLogLine[] = []
  const listeners = new Set<(line: DemoLogLine) => void>()
  let pending = ''
  // Always drained, so the child can never block on a full pipe.
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    pending += chunk
    const lines = pending.split('\n')
    pending = lines.pop() ?? ''
    for (const text of lines) {
      if (text.trim().length === 0) continue
      let line: DemoLogLine
      try {
        line = JSON.parse(text) as DemoLogLine
      } catch {
        line = { msg: text }
      }
      logs.push(line)
      for (const fn of listeners) fn(line)
    }
  })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })

  const kill = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<DemoExit> => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal)
    return await exited
  }
  const output = (): string => `\n--- stdout ---\n${logs.map((l) => JSON.stringify(l)).join('\n')}\n--- stderr ---\n${stderr}`

  const timeout = options.startTimeout ?? 15_000
  let timer: ReturnType<typeof setTimeout> | undefined
  let onLine: ((line: DemoLogLine) => void) | undefined
  try {
    await Promise.race([
      new Promise<void>((resolve) => {
        onLine = (line) => { if (typeof line.msg === 'string' && line.msg.startsWith('Server listening')) resolve() }
        listeners.add(onLine)
      }),
      exited.then((exit) => {
        if (failure !== undefined) throw new Error(`the demo could not be started: ${failure.message}`)
        throw new Error(`the demo exited (code ${exit.code}, signal ${exit.signal}) before listening on port ${options.port}${output()}`)
      }),
      new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`the demo did not log "Server listening" within ${timeout} ms${output()}`)), timeout)
      })
    ])
  } catch (err) {
    await kill('SIGKILL')
    throw err
  } finally {
    clearTimeout(timer)
    if (onLine !== undefined) listeners.delete(onLine)
  }

  return {
    url: `http://127.0.0.1:${options.port}`,
    wsUrl: `ws://127.0.0.1:${options.port}`,
    port: options.port,
    pid: child.pid as number,
    logs,
    stderr: () => stderr,
    kill,
    exited
  }
}

/** Logs in to the demo (`POST /api/login`) and returns the token. */
export async function demoLogin (url: string, name: string, rooms?: string[]): Promise<string> {
  const res = await fetch(`${url}/api/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(rooms === undefined ? { name } : { name, rooms })
  })
  if (res.status !== 200) throw new Error(`login ${name}: HTTP ${res.status} ${await res.text()}`)
  return ((await res.json()) as { token: string }).token
}
