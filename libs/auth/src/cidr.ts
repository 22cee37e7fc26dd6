import { BlockList, isIP } from 'node:net';
import { FerryError } from '@ferry/protocol';

/**
 * A set of address ranges (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`, `::1`). IPv4 ranges also match
 * IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`), which is how a dual-stack listener sees IPv4 peers.
 */
export class AddressList {
  readonly #list = new BlockList();
  readonly entries: readonly string[];

  private constructor(entries: string[]) {
    this.entries = entries;
  }

  /** Parses a comma-separated list; every bad entry is named in one FERRY_ERR_CONFIG. */
  static parse(spec: string): AddressList {
    const entries = spec.split(',').map((part) => part.trim()).filter(Boolean);
    const list = new AddressList(entries);
    const problems: string[] = [];
    for (const entry of entries) {
      const [address = '', prefixText, extra] = entry.split('/');
      const family = isIP(address);
      const max = family === 4 ? 32 : 128;
      const prefix = prefixText === undefined ? max : /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : Number.NaN;
      if (family === 0 || extra !== undefined || !(prefix >= 0 && prefix <= max)) {
        problems.push(`"${entry}": expected an IPv4 or IPv6 address, optionally with /prefix (e.g. 10.0.0.0/8, fd00::/8)`);
        continue;
      }
      list.#list.addSubnet(address, prefix, family === 4 ? 'ipv4' : 'ipv6');
    }
    if (problems.length > 0) throw new FerryError('FERRY_ERR_CONFIG', { message: problems.join('; ') });
    return list;
  }

  get empty(): boolean {
    return this.entries.length === 0;
  }

  /** False for anything that is not an IP address (e.g. a garbled X-Forwarded-For entry). */
  has(address: string): boolean {
    const family = isIP(address);
    return family !== 0 && this.#list.check(address, family === 4 ? 'ipv4' : 'ipv6');
  }
}

/**
 * The address a request comes from. `X-Forwarded-For` is believed only as far as it was written
 * by trusted proxies: walking it from the right, the first address that is not a trusted proxy is
 * the client. Without a trusted peer the header is ignored, since anyone can send it.
 */
export function clientAddress(peer: string, forwardedFor: string | string[] | undefined, trustedProxies: AddressList | undefined): string {
  if (!trustedProxies || trustedProxies.empty || !trustedProxies.has(peer) || forwardedFor === undefined) return peer;
  const hops = (Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor).split(',').map((h) => h.trim()).filter(Boolean);
  let client = peer;
  for (let i = hops.length - 1; i >= 0; i--) {
    client = hops[i] ?? '';
    if (!trustedProxies.has(client)) break;
  }
  return client;
}
