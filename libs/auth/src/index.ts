export { SignedClient, type ClientCredentials, type SignedClientOptions } from './client.ts';
export {
  RegistryClient, envDigests, type JoinToken, type ProjectedRelease, type ReleasePage, type ReleaseSummary, type ActualReport, type DriftCorrection, type DesiredRecord, type DriftReason, type HostRecord, type HostRegistration, type Registered, type ServiceState,
} from './registry.ts';
export { canonicalString, computeSignature, signRequest, type SignedFields, type SignOptions } from './canonical.ts';
export { AddressList, clientAddress } from './cidr.ts';
export {
  KEY_ID_PATTERN, fingerprint, generateKeyPair, isValidKeyId, parsePrivateKey, parsePublicKey, privateKeyPem, publicKeyText, signBytes, verifyBytes,
  type SigningKey,
} from './keys.ts';
export { DOCUMENT_SCHEME, documentHeader, documentMessage, openDocument, parseDocument, signDocument, type SignedDocument } from './signed.ts';
export {
  GRANT_TYPE, GrantPayloadSchema, REVOCATIONS_TYPE, ROLES, RevocationsPayloadSchema, coversHost, coversService, issueGrant, issueRevocations, roleAllows,
  toScope, validity, type Action, type GrantPayload, type GrantRequest, type HostFacts, type RevocationsPayload, type Role, type Scope, type Validity,
} from './grants.ts';
export {
  TRUST_SCHEMA, TrustStore, emptyTrust, parseTrust, readTrustFileSync, writeTrustFile, type ExtraKeys, type TrustFile, type TrustKeyEntry, type TrustStoreOptions,
} from './trust.ts';
export { IDENTITY_TYPE, checkIdentity, hostKeyId, isChallenge, newChallenge, signIdentity, type Identity } from './identity.ts';
export { HOST_KEY_FILE, loadCredentials, loadOrCreateHostKey, type CredentialSources } from './credentials.ts';
export {
  MemoryNonceStore, RedisNonceStore, replayFloor, type NonceStore, type ReplayFloor, type NonceStoreStatus, type RedisNonceStoreOptions, type StoreLogger,
} from './nonces.ts';
export { RequestVerifier, authorize, type Authorized, type RequestFacts, type ScopeAtTime, type Verified, type VerifierOptions } from './verify.ts';
