import { FerryError } from '@ferry/protocol';
import type { Io } from './io.ts';

/** `ferry keygen` made shared secrets; keys are Ed25519 pairs now, made by `ferry key new`. */
export function keygenCommand(_args: string[], _io: Io): number {
  throw new FerryError('FERRY_ERR_USAGE', { message: '"ferry keygen" is gone: make a key pair with "ferry key new --id ID"' });
}
