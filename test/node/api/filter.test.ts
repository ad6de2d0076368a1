import { describe, expect, it } from 'vitest'
import { FilterSyntaxError, matches, parseFilter } from '../../../src/node/api/filter.ts'

const web = {
  Node: 'n1',
  ServiceName: 'web',
  ServicePort: 8080,
  ServiceTags: ['v1', 'primary'],
  ServiceMeta: { version: '1.2', 'team-x': 'a' },
  Service: { Tags: ['v1'], Meta: {} },
  Checks: [],
  Enabled: true,
}
const api = {
  Node: 'n2',
  ServiceName: 'api',
  ServicePort: 9090,
  ServiceTags: [],
  ServiceMeta: {},
  Service: { Tags: ['canary'], Meta: { env: 'prod' } },
  Checks: [{ Status: 'critical' }],
  Enabled: false,
}

const pick = (f: string) => [web, api].filter((x) => matches(parseFilter(f), x)).map((x) => x.ServiceName)

describe('Consul filter expressions (go-bexpr)', () => {
  it.each([
    ['ServiceName == web', ['web']],
    ['ServiceName == "web"', ['web']],
    ['ServiceName != "web"', ['api']],
    ['ServicePort == 9090', ['api']],
    ['ServicePort == "8080"', ['web']],
    ['Enabled == true', ['web']],
    ['"v1" in ServiceTags', ['web']],
    ['"v1" not in ServiceTags', ['api']],
    ['ServiceTags contains "primary"', ['web']],
    ['ServiceTags not contains "primary"', ['api']],
    ['Service.Tags contains canary', ['api']],
    ['ServiceMeta.version == "1.2"', ['web']],
    ['ServiceMeta["team-x"] == a', ['web']],
    ['"env" in Service.Meta', ['api']],
    ['ServiceName contains "we"', ['web']],
    ['ServiceTags is empty', ['api']],
    ['ServiceTags is not empty', ['web']],
    ['Checks is empty', ['web']],
    ['Missing.Field is empty', ['web', 'api']],
    ['servicename == api', ['api']],
    ['ServiceName == web or ServiceName == api', ['web', 'api']],
    ['ServiceName == web and ServicePort == 9090', []],
    ['not ServiceName == web', ['api']],
    ['not (ServiceName == web or ServicePort == 9090)', []],
    ['(ServiceName == web or ServiceName == api) and ServiceTags is empty', ['api']],
    ['ServiceName == `web`', ['web']],
    ['ServiceName == "w\\"eb"', []],
    ['Checks.Status == critical', ['api']],
    ['Checks.Status != critical', ['web']],
    ['Checks.Status is empty', ['web']],
  ])('%s', (f, want) => {
    expect(pick(f)).toEqual(want)
  })

  it('and binds tighter than or', () => {
    // a or (b and c): web matches through the first term.
    expect(pick('ServiceName == web or ServiceName == api and ServicePort == 1')).toEqual(['web'])
  })

  it.each([
    '',
    'ServiceName',
    'ServiceName ==',
    'ServiceName = web',
    '(ServiceName == web',
    'ServiceName == web)',
    '"unterminated == x',
    'ServiceName matches "w.*"',
    'ServiceName is full',
    '== web',
    'ServiceName == web and',
    'x'.repeat(3000),
    `${'('.repeat(100)}a == b${')'.repeat(100)}`,
  ])('refuses %j', (f) => {
    expect(() => parseFilter(f)).toThrow(FilterSyntaxError)
  })
})
