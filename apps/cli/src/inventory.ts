import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { takeInventory } from '@ferry/bundle';
import { ImageStore, createDockerClient } from '@ferry/docker';
import { writeFileAtomic } from '@ferry/durable';
import { FerryError } from '@ferry/protocol';
import { parse } from './args.ts';
import { line, type Io } from './io.ts';

/**
 * `ferry inventory [-o host.json]`: the layers this host's engine (DOCKER_HOST) holds, for
 * `ferry bundle create --for-inventory` on the other side of the air gap. Only layer digests are
 * written: no image name, tag, container or setting leaves the site.
 */
export async function inventoryCommand(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, { out: { type: 'string', short: 'o' }, host: { type: 'string' } });
  const host = values.host ?? io.env.FERRY_HOST_ID ?? hostname();
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/.test(host)) throw new FerryError('FERRY_ERR_USAGE', { message: 'ferry inventory: --host NAME, letters, digits and . _ - (default FERRY_HOST_ID, else the host name)' });
  const inventory = await takeInventory(new ImageStore(createDockerClient(io.env.DOCKER_HOST)), host);
  const text = `${JSON.stringify(inventory, null, 2)}\n`;
  if (values.out === undefined) {
    io.stdout.write(text);
    return 0;
  }
  const out = resolve(values.out);
  // A file on the media is whole or absent.
  await writeFileAtomic(out, text);
  line(io.stderr, `inventory of ${host}: ${inventory.chains.length} image layer chain(s), ${new Set(inventory.chains.flat()).size} layers, written to ${out}`);
  return 0;
}
