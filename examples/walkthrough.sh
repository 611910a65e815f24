#!/usr/bin/env sh
# A self-contained walk-through of the security agent: a development CA, two users in two health
# domains, a referral sealed as a Direct message by the clinic and opened by the hospital.
# Usage: sh examples/walkthrough.sh [WORK_DIR]     (default: ./walkthrough-out)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-./walkthrough-out}
# Only ever delete a directory this script made (it leaves a marker file in it).
if [ -d "$work" ] && [ -n "$(ls -A "$work")" ] && [ ! -e "$work/.hisp-walkthrough" ]; then
    echo "walkthrough: $work exists and was not made by this script; choose another directory" >&2
    exit 1
fi
rm -rf "$work"
mkdir -p "$work"
touch "$work/.hisp-walkthrough"

step() { printf '\n== %s\n' "$*"; }

step "1. A development CA (test certificates only)"
hisp ca init --out "$work/ca" --name "Walkthrough Development CA"

step "2. Two users: the clinic's sender and the hospital's intake address (address-bound, RSA-2048)"
hisp ca issue --ca "$work/ca" --address dr.example@direct.clinic.example --out "$work/clinic"
hisp ca issue --ca "$work/ca" --address intake@direct.hospital.example --out "$work/hospital"

step "3. The clinic's HISP seals the referral: sign (SHA-256), wrap, encrypt (AES-128-CBC, RSA-OAEP)"
hisp message outgoing \
    --cert "$work/clinic/dr.example@direct.clinic.example.pem" \
    --key "$work/clinic/dr.example@direct.clinic.example.key" \
    --to-cert "$work/hospital/intake@direct.hospital.example.pem" \
    -i "$here/referral.eml" -o "$work/referral.direct.eml"
sed -n '1,/^\r\{0,1\}$/p' "$work/referral.direct.eml"
echo "... $(wc -c < "$work/referral.direct.eml") bytes of S/MIME follow"

step "4. The hospital's HISP opens it: decrypt, verify, check the signer's path and binding, unwrap"
hisp message incoming --explain \
    --cert "$work/hospital/intake@direct.hospital.example.pem" \
    --key "$work/hospital/intake@direct.hospital.example.key" \
    --anchor "$work/ca/ca.pem" \
    -i "$work/referral.direct.eml" -o "$work/referral.opened.eml"

step "5. The opened message is the referral the clinic wrote, byte for byte"
cmp "$here/referral.eml" "$work/referral.opened.eml" && echo "identical: $work/referral.opened.eml"

step "6. A message from a sender the hospital does not trust is refused (exit status 1)"
hisp ca init --out "$work/rogue-ca" --name "Untrusted CA" >/dev/null
hisp ca issue --ca "$work/rogue-ca" --address dr.example@direct.clinic.example --out "$work/rogue" >/dev/null
hisp message outgoing \
    --cert "$work/rogue/dr.example@direct.clinic.example.pem" \
    --key "$work/rogue/dr.example@direct.clinic.example.key" \
    --to-cert "$work/hospital/intake@direct.hospital.example.pem" \
    -i "$here/referral.eml" -o "$work/rogue.direct.eml"
if hisp message incoming \
    --cert "$work/hospital/intake@direct.hospital.example.pem" \
    --key "$work/hospital/intake@direct.hospital.example.key" \
    --anchor "$work/ca/ca.pem" \
    -i "$work/rogue.direct.eml" -o "$work/rogue.opened.eml"; then
    echo "ERROR: an untrusted message was accepted" >&2
    exit 1
fi
test ! -e "$work/rogue.opened.eml" && echo "refused, nothing written"
printf '\nWalk-through complete.\n'
