import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KeyObject } from 'node:crypto';
import {
  TRUST_SCHEMA, documentHeader, generateKeyPair, issueGrant, privateKeyPem, publicKeyText, type GrantRequest, type Role, type SignedDocument, type TrustFile,
} from '@ferry/auth';

/** A key pair as tests use it: signs like a sender, and its files exist for child processes. */
export interface TestKey {
  keyId: string;
  privateKey: KeyObject;
  /** Base64 of the raw public key, as trust files carry it. */
  publicKey: string;
  /** The PEM private key's file (0600), for FERRY_KEY_FILE. */
  file: string;
}

let dir: string | undefined;
function keyDir(): string {
  dir ??= mkdtempSync(join(tmpdir(), 'ferry-test-keys-'));
  return dir;
}

let count = 0;
/** A new Ed25519 key pair named `keyId`, its private key written to a 0600 file. */
export function testKey(keyId: string): TestKey {
  const { privateKey } = generateKeyPair();
  const file = join(keyDir(), `${keyId}-${++count}.pem`);
  writeFileSync(file, privateKeyPem(privateKey), { mode: 0o600 });
  return { keyId, privateKey, publicKey: publicKeyText(privateKey), file };
}

/** One key entry of a trust file: the key trusted directly, with a scope. */
export interface TrustEntry {
  key: TestKey;
  role?: Role;
  services?: string[];
  hosts?: string[];
  notAfter?: string;
  graceSeconds?: number;
}

/** A trust document: each key with its scope (default: deploy everything, everywhere). */
export function trustDocument(entries: (TestKey | TrustEntry)[], extra: { grants?: SignedDocument[]; revocations?: SignedDocument[] } = {}): TrustFile {
  return {
    schema: TRUST_SCHEMA,
    keys: entries.map((e) => ('key' in e ? e : { key: e })).map((e) => ({
      id: e.key.keyId, publicKey: e.key.publicKey, role: e.role ?? 'deploy', services: e.services ?? ['*'], hosts: e.hosts ?? ['*'],
      ...(e.notAfter ? { notAfter: e.notAfter } : {}), graceSeconds: e.graceSeconds ?? 0,
    })),
    grants: extra.grants ?? [],
    revocations: extra.revocations ?? [],
  };
}

/** Writes a trust file for these keys and answers its path (FERRY_TRUST_FILE). */
export function trustFile(entries: (TestKey | TrustEntry)[] | TestKey, extra: { grants?: SignedDocument[]; revocations?: SignedDocument[] } = {}): string {
  const file = join(keyDir(), `trust-${++count}.json`);
  writeFileSync(file, JSON.stringify(trustDocument(Array.isArray(entries) ? entries : [entries], extra)), { mode: 0o600 });
  return file;
}

/** The environment a sender process signs with. */
export function keyEnv(key: TestKey, grant?: SignedDocument): Record<string, string> {
  return { FERRY_KEY_ID: key.keyId, FERRY_KEY_FILE: key.file, ...(grant ? { FERRY_GRANT: documentHeader(grant) } : {}) };
}

/** A grant for `key`, signed by `admin`. */
export function grantFor(key: TestKey, admin: TestKey, request: Omit<GrantRequest, 'keyId' | 'publicKey'>): SignedDocument {
  return issueGrant({ ...request, keyId: key.keyId, publicKey: key.publicKey }, admin);
}
