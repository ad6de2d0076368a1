/**
 * bench:gossip-stalls — the SWIM core in the deterministic simulator (no processes, no crypto):
 * `--size` members (default 200) in `--groups` groups (default 10) that stall together, as the
 * agents of one `multi-agent-worker.ts` process do when the machine's CPUs are saturated.
 *
 * Each group stalls every 0.5–1.5 s: 20–100 ms most times, and one time in `--long-every`
 * (default 10) for 40–100% of `--max-stall-ms` (default 1200). A stalled member reads nothing and
 * runs no timer until the stall ends (`SimNetwork.pause`). Over `--seconds` (default 60) of virtual
 * time, from a converged cluster, it counts suspicions and deaths (every one false: nobody
 * crashes), for each profile of `--profiles` (default lan,local).
 *
 * What it is for: `bench:gossip-idle` at N=200 on a 2-core machine stalls worker processes up to
 * 1.4 s, and this shows, reproducibly, how long a stall each profile's suspicion timeout absorbs.
 * Flags: --size, --groups, --seconds, --seed (default 1), --max-stall-ms, --long-every,
 * --profiles, --json (the last stdout line is one JSON object).
 */
import { swimProfiles } from '../src/gossip/config.ts'
import { SimNetwork } from '../src/gossip/sim-network.ts'
import { seededRng } from '../src/common/rng.ts'
import { GOSSIP_PROFILES } from '../src/node/agent/config-constants.ts'
import { argValue, emitJson, progress, table } from './lib.ts'

const size = Number(argValue('size', '200'))
const groups = Number(argValue('groups', '10'))
const seconds = Number(argValue('seconds', '60'))
const seed = Number(argValue('seed', '1'))
const maxStallMs = Number(argValue('max-stall-ms', '1200'))
const longEvery = Number(argValue('long-every', '10'))
const profiles = (argValue('profiles', 'lan,local') ?? '').split(',')
for (const p of profiles) {
  if (!GOSSIP_PROFILES.some((q) => q === p)) {
    process.stderr.write(`--profiles: expected a list of ${GOSSIP_PROFILES.join(', ')}, got ${p}\n`)
    process.exit(2)
  }
}

function run(profile: keyof typeof swimProfiles): { suspicions: number; deaths: number; dead: number } {
  let suspicions = 0
  const deaths: string[] = []
  const sim = new SimNetwork({
    seed,
    config: swimProfiles[profile],
    latencyMs: { min: 0.2, max: 2 },
    onEvent: (_node, ev) => {
      if (ev.type === 'member:suspect') suspicions++
      if (ev.type === 'member:fail') deaths.push(ev.member.id)
    },
  })
  const ids = Array.from({ length: size }, (_, i) => `n${i}`)
  sim.bootstrapConverged(ids)
  // The stalls come from their own generator, so that every profile sees the same ones.
  const rng = seededRng(seed + 1)
  const start = sim.now
  for (let g = 0; g < groups; g++) {
    const members = ids.filter((_, i) => i % groups === g)
    for (let t = rng() * 1000; t < seconds * 1000; t += 500 + rng() * 1000) {
      const ms = rng() < 1 / longEvery ? maxStallMs * (0.4 + 0.6 * rng()) : 20 + 80 * rng()
      sim.schedule(start + t, () => {
        for (const m of members) sim.pause(m, ms)
      })
    }
  }
  sim.runFor(seconds * 1000)
  return { suspicions, deaths: deaths.length, dead: new Set(deaths).size }
}

const figures: Record<string, number> = {}
const rows: (string | number)[][] = []
for (const p of profiles as (keyof typeof swimProfiles)[]) {
  progress(`[${p}] ${size} members, ${groups} groups, ${seconds} s, stalls up to ${maxStallMs} ms`)
  const r = run(p)
  rows.push([p, r.suspicions, r.deaths, r.dead])
  figures[`suspicions_${p}`] = r.suspicions
  figures[`false_deaths_${p}`] = r.deaths
  figures[`members_dead_${p}`] = r.dead
}
table(['profile', 'suspicions', 'false deaths (member, observer pairs)', 'members declared dead'], rows)
emitJson({ size, groups, seconds, seed, max_stall_ms: maxStallMs, long_every: longEvery, ...figures })
