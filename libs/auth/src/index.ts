export { SignedClient, type ClientCredentials, type SignedClientOptions } from './client.ts';
export {
  RegistryClient, parseLabels, type ActualReport, type DesiredRecord, type DriftReason, type HostRecord, type HostRegistration, type Registered, type ServiceState,
} from './registry.ts';
export { canonicalString, computeSignature, signRequest, type SignedFields, type SignOptions } from './canonical.ts';
export { AddressList, clientAddress } from './cidr.ts';
export { KeyRing, generateSecret, isValidKeyId, type KeyDescription, type KeyEntry } from './keyring.ts';
export {
  MemoryNonceStore, RedisNonceStore, type NonceStore, type NonceStoreStatus, type RedisNonceStoreOptions, type StoreLogger,
} from './nonces.ts';
export { RequestVerifier, type RequestFacts, type Verified, type VerifierOptions } from './verify.ts';
