import t from 'tap'
import { readFile } from 'node:fs/promises'
import { errors, RESERVED_COMMANDS } from '../plugin.js'

const read = (name: string): Promise<string> => readFile(new URL(`../docs/${name}`, import.meta.url), 'utf8')

/** The first-column codes of a Markdown table's rows, e.g. "| `FST_SOCKET_X` | …" → FST_SOCKET_X. */
function firstColumn (markdown: string, pattern: RegExp): string[] {
  return markdown.split('\n').map((line) => pattern.exec(line)?.[1]).filter((code): code is string => code !== undefined)
}

t.test('every error code is in docs/errors.md, with its HTTP status', async (t) => {
  const doc = await read('errors.md')
  const documented = new Map(doc.split('\n')
    .map((line) => /^\| `(FST_SOCKET_[A-Z_]+)` \| (\d{3}) \|/.exec(line))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => [m[1] as string, Number(m[2])]))
  for (const [code, ErrorClass] of Object.entries(errors)) {
    t.equal(documented.get(code), new ErrorClass('x', 'y').statusCode, `${code} is documented with its status`)
  }
  t.same([...documented.keys()].sort(), Object.keys(errors).sort(), 'and nothing else is')
})

t.test('the reserved commands in docs/protocol.md are the ones in the code', async (t) => {
  const doc = await read('protocol.md')
  const section = doc.slice(doc.indexOf('## Reserved commands'), doc.indexOf('## Heartbeat'))
  t.same(firstColumn(section, /^\| `([a-z.-]+)` \|/).sort(), [...RESERVED_COMMANDS].sort())
})
