export { canonicalString, computeSignature, signRequest, type SignedFields, type SignOptions } from './canonical.ts';
export { KeyRing, generateSecret, isValidKeyId } from './keyring.ts';
export { MemoryNonceStore, type NonceStore } from './nonces.ts';
export { RequestVerifier, type RequestFacts, type Verified, type VerifierOptions } from './verify.ts';
