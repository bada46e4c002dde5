import t, { type Test } from 'tap'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import ts from 'typescript'
import { Client, refused, sign } from './helpers/server.js'

// forge-socket as a user gets it: the package `npm pack` makes (from the dist/ that `npm test` builds first),
// installed into a new app with only what a user adds (fastify; @types/node for TypeScript), the README's Usage and
// Client examples type-checked as written (strict, skipLibCheck: false; NodeNext and Bundler) and run, both entry
// points required from CommonJS, TypeScript's node10 resolution, and an injectWS test of an act route.

// npm install and the type-checks with skipLibCheck: false take a while (about 45 s on two idle cores): the
// longest file of the suite, named to sort (and so start) near the front, where the others run beside it.
t.setTimeout(300_000)

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const FIXTURES = join(ROOT, 'test', 'fixtures', 'consumer')
const run = promisify(execFile)

/** The ```ts block that follows `heading` in the README, as written there. */
function readmeBlock (heading: string): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  const at = readme.indexOf(`\n${heading}\n`)
  if (at === -1) throw new Error(`README.md has no "${heading}"`)
  const block = /```ts\n([\s\S]*?)```/.exec(readme.slice(at))
  if (block === null) throw new Error(`README.md has no ts block under "${heading}"`)
  return block[1] as string
}

const COMPILER_OPTIONS = {
  strict: true,
  skipLibCheck: false,
  noUncheckedIndexedAccess: true,
  target: 'ES2022',
  lib: ['ES2022'],
  types: ['node']
}

function tsconfig (dir: string, name: string, options: Record<string, unknown>, files: string[]): string {
  const file = join(dir, `tsconfig.${name}.json`)
  writeFileSync(file, JSON.stringify({ compilerOptions: { ...COMPILER_OPTIONS, ...options }, files }, null, 2))
  return file
}

/**
 * Type-checks a consumer's project as `tsc -p` does (and emits, when it has an outDir); a failure lists the
 * diagnostics as tsc prints them. `scope: 'package'` checks the app's own files and every declaration file of
 * fastify-forge-socket, but not the other packages' declarations (TypeBox's alone take most of a full check): the
 * NodeNext run checks those, as a user's `tsc` would.
 */
function typeCheck (t: Test, project: string, scope: 'all' | 'package', what: string): void {
  const dir = dirname(project)
  const parsed = ts.getParsedCommandLineOfConfigFile(project, undefined, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (diagnostic) => { throw new Error(ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n')) }
  }) as ts.ParsedCommandLine
  const program = ts.createProgram(parsed.fileNames, parsed.options)
  const diagnostics: ts.Diagnostic[] = [...parsed.errors]
  if (scope === 'all') {
    diagnostics.push(...ts.getPreEmitDiagnostics(program))
  } else {
    diagnostics.push(...program.getOptionsDiagnostics(), ...program.getGlobalDiagnostics())
    for (const file of program.getSourceFiles()) {
      if (file.fileName.includes('/node_modules/') && !file.fileName.includes('/node_modules/fastify-forge-socket/')) continue
      diagnostics.push(...program.getSyntacticDiagnostics(file), ...program.getSemanticDiagnostics(file))
    }
  }
  if (diagnostics.length === 0 && parsed.options.outDir !== undefined) diagnostics.push(...program.emit().diagnostics)
  if (diagnostics.length === 0) {
    t.pass(what)
    return
  }
  t.fail(what, { diagnostics: ts.formatDiagnostics(diagnostics, { getCanonicalFileName: (name) => name, getCurrentDirectory: () => dir, getNewLine: () => '\n' }) })
}

/** Starts a compiled script and resolves with the first line of its stdout that `match` accepts. */
async function firstLine (child: ChildProcess, match: (line: string) => boolean): Promise<string> {
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })
  const exited = once(child, 'exit').then(([code]) => { throw new Error(`exited with ${String(code)} before the line`) })
  const found = new Promise<string>((resolve) => lines.on('line', (line) => { if (match(line)) resolve(line) }))
  try {
    return await Promise.race([found, exited])
  } finally {
    lines.close()
  }
}

t.test('the packed package, installed into a new app', async (t) => {
  if (!existsSync(join(ROOT, 'dist', 'plugin.js'))) throw new Error('dist/ is missing: `npm test` builds it first (npm run build)')
  const dir = mkdtempSync(join(tmpdir(), 'forge-socket-consumer-'))
  t.after(() => { if (process.env.KEEP_CONSUMER === undefined) rmSync(dir, { recursive: true, force: true }) })

  const { stdout: packed } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: ROOT })
  const [tarball] = JSON.parse(packed) as Array<{ filename: string, files: Array<{ path: string }> }>
  if (tarball === undefined) throw new Error('npm pack made nothing')
  const shipped = tarball.files.map((f) => f.path)
  t.notOk(shipped.some((path) => path.endsWith('.map')), 'no source maps that point at sources the package does not ship')
  t.ok(shipped.includes('docs/server.md'), 'the docs the README links to are shipped')
  t.notOk(shipped.some((path) => path.startsWith('dist/test/') || path.startsWith('dist/bench/') || path.startsWith('dist/examples/')), 'no tests, bench or demo')

  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }))
  await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error',
    join(dir, tarball.filename), 'fastify@5', '@types/node@20'], { cwd: dir })
  t.notOk(existsSync(join(dir, 'node_modules', 'ioredis')), 'an app on the memory broker does not install ioredis')

  writeFileSync(join(dir, 'server.ts'), readmeBlock('## Usage'))
  writeFileSync(join(dir, 'client.ts'), readmeBlock('## Client'))
  for (const file of ['extra.ts', 'inject.ts', 'require.cjs', 'node10.ts']) cpSync(join(FIXTURES, file), join(dir, file))

  const sources = ['server.ts', 'client.ts', 'extra.ts', 'inject.ts']
  typeCheck(t, tsconfig(dir, 'nodenext', { module: 'NodeNext', moduleResolution: 'NodeNext', outDir: 'out' }, sources), 'all',
    'the README examples and a typed app compile under NodeNext, strict, skipLibCheck: false')
  typeCheck(t, tsconfig(dir, 'bundler', { module: 'Preserve', moduleResolution: 'Bundler', noEmit: true }, sources), 'package',
    'the same, and every declaration file of the package, under Bundler')
  typeCheck(t, tsconfig(dir, 'node10', { module: 'CommonJS', moduleResolution: 'node', esModuleInterop: true, noEmit: true }, ['node10.ts']), 'package',
    'the client types are found with moduleResolution: node')

  // The README's server, run as written: JWT_SECRET from the environment, the port from PORT.
  const secret = 'a-secret-for-the-package-test-only'
  const server = spawn(process.execPath, [join(dir, 'out', 'server.js')], { cwd: dir, env: { ...process.env, JWT_SECRET: secret, PORT: '0' }, stdio: ['ignore', 'pipe', 'inherit'] })
  t.after(() => { server.kill() })
  const listening = JSON.parse(await firstLine(server, (line) => line.includes('Server listening at'))) as { msg: string }
  const base = (/http:\/\/127\.0\.0\.1:\d+/.exec(listening.msg) as RegExpExecArray)[0]
  const ws = base.replace('http', 'ws')

  const ann = new Client(`${ws}/ws/chat/lobby`, { protocols: ['forge.v1', `bearer.${sign({ sub: 'ann' }, { key: secret })}`] })
  await ann.next('connected')
  const carol = await refused(`${ws}/ws/chat/lobby`, { headers: { authorization: `Bearer ${sign({ sub: 'carol' }, { key: secret })}` } })
  t.same([carol.status, carol.body.code], [403, 'FST_SOCKET_FORBIDDEN'], "canEnter's refusal is a 403 before the upgrade")
  // The README's client, run as written, as bob: its message reaches ann through the room.
  const client = spawn(process.execPath, [join(dir, 'out', 'client.js')], { cwd: dir, env: { ...process.env, CHAT_URL: `${ws}/ws/chat/lobby`, TOKEN: sign({ sub: 'bob' }, { key: secret }) }, stdio: ['ignore', 'pipe', 'inherit'] })
  t.after(() => { client.kill() })
  const heard = await ann.next('chat-message')
  t.same(heard.param, { from: 'bob', text: 'hi' }, "the README client's message reaches the README server's room")
  t.match(await firstLine(client, (line) => line.includes('hi')), /from: 'bob'/, 'and the README client prints the broadcast')
  const announce = async (token?: string): Promise<number> => (await fetch(`${base}/rooms/lobby/announcements`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token === undefined ? {} : { authorization: `Bearer ${token}` }) },
    body: JSON.stringify({ text: 'closing at 6' })
  })).status
  t.equal(await announce(), 401, 'the HTTP route refuses a request without a token')
  t.equal(await announce(sign({ sub: 'bob' }, { key: secret })), 200)
  t.same((await ann.next('announcement')).param, { text: 'closing at 6' }, 'a broadcast from an HTTP route reaches the room')
  ann.close()

  const injected = await run(process.execPath, [join(dir, 'out', 'inject.js')], { cwd: dir })
  t.equal(injected.stdout.trim(), 'connected,reply', 'app.injectWS opens an act route and gets its answers')
  const required = await run(process.execPath, [join(dir, 'require.cjs')], { cwd: dir })
  t.equal(required.stdout.trim(), 'function function connected', 'require() of both entry points, and the client connects')
})
