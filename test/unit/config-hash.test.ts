import assert from 'node:assert/strict';
import { test } from 'node:test';
import { configHash } from '@ferry/receiver';
import { ManifestSchema, type Manifest } from '@ferry/protocol';

const base = ManifestSchema.parse({
  schema: 'ferry.manifest/v1',
  deploymentId: '0b9f6f0e-3c41-4d0b-9a8e-9b1a3a0f2f11',
  createdAt: '2026-11-23T10:00:00.000Z',
  image: { ref: 'web:1', id: `sha256:${'a'.repeat(64)}`, diffIds: [`sha256:${'b'.repeat(64)}`] },
  package: { format: 'docker-archive', compression: 'zstd', size: 10, digest: `blake3:${'c'.repeat(64)}` },
  service: { name: 'web', env: { A: '1', B: '2' }, network: 'host' },
});
const withService = (service: Partial<Manifest['service']>): Manifest => ({ ...base, service: { ...base.service, ...service } });

test('the config hash ignores key order and the deployment id', () => {
  const reordered = withService({ env: { B: '2', A: '1' } });
  assert.equal(configHash(reordered), configHash(base));
  assert.equal(configHash({ ...base, deploymentId: '1c9f6f0e-3c41-4d0b-9a8e-9b1a3a0f2f12' }), configHash(base));
});

test('the config hash changes with anything the container is made from', () => {
  const hashes = new Set([
    configHash(base),
    configHash(withService({ env: { A: '1', B: '3' } })),
    configHash(withService({ network: 'bridge' })),
    configHash(withService({ volumes: ['data:/data'] })),
    configHash({ ...base, image: { ...base.image, id: `sha256:${'d'.repeat(64)}` } }),
  ]);
  assert.equal(hashes.size, 5);
});
