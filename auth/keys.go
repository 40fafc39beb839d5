package auth

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/golang-jwt/jwt/v5"
)

// The algorithms each key type verifies. Pinning them is what refuses
// "none" and algorithm confusion: an RSA public key is never an HMAC secret.
var (
	hmacMethods = []string{"HS256", "HS384", "HS512"}
	rsaMethods  = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	edMethods   = []string{"EdDSA"}
)

// methodsFor returns the algorithms a public key verifies.
func methodsFor(key any) ([]string, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return rsaMethods, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return []string{"ES256"}, nil
		case elliptic.P384():
			return []string{"ES384"}, nil
		case elliptic.P521():
			return []string{"ES512"}, nil
		}
		return nil, fmt.Errorf("ECDSA curve %s not supported", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return edMethods, nil
	case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
		return nil, errors.New("a private key where a public key belongs")
	}
	return nil, fmt.Errorf("key type %T not supported", key)
}

// staticKey is one key given at start: an HMAC secret or a PEM public key.
type staticKey struct {
	k    any
	algs []string
}

// ReadSecretFile reads an HMAC secret from a file, without the one trailing
// newline ("\n" or "\r\n") an editor or echo adds. Every other byte is the
// secret's.
func ReadSecretFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read secret: %w", err)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	b = bytes.TrimSuffix(b, []byte("\r"))
	if len(b) == 0 {
		return nil, fmt.Errorf("read secret: %s is empty", path)
	}
	return b, nil
}

func newHMACKey(secret []byte) (*staticKey, error) {
	if len(secret) < MinHMACSecretBytes {
		return nil, fmt.Errorf("HMAC secret is %d bytes, at least %d are needed", len(secret), MinHMACSecretBytes)
	}
	return &staticKey{k: slices.Clone(secret), algs: hmacMethods}, nil
}

func newPEMKey(data []byte) (*staticKey, error) {
	k, err := parsePublicKeyPEM(data)
	if err != nil {
		return nil, err
	}
	algs, err := methodsFor(k)
	if err != nil {
		return nil, fmt.Errorf("PEM key: %w", err)
	}
	return &staticKey{k: k, algs: algs}, nil
}

func (s *staticKey) methods() []string { return s.algs }

func (s *staticKey) key(context.Context, *jwt.Token) (any, error) { return s.k, nil }

func (s *staticKey) close() {}

// parsePublicKeyPEM reads the first PEM block of data: a PKIX "PUBLIC KEY",
// a PKCS #1 "RSA PUBLIC KEY" or a "CERTIFICATE" whose key is used.
func parsePublicKeyPEM(data []byte) (any, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("PEM key: no PEM block found")
	}
	switch block.Type {
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM key: %w", err)
		}
		return k, nil
	case "RSA PUBLIC KEY":
		k, err := x509.ParsePKCS1PublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM key: %w", err)
		}
		return k, nil
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM key: %w", err)
		}
		return c.PublicKey, nil
	}
	return nil, fmt.Errorf("PEM key: a %q block; want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE (never a private key)", block.Type)
}
