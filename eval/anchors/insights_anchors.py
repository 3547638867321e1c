"""Anchors for `cairn-eval insights`: Microsoft Presidio (PII) and vaderSentiment
(sentiment) on the same labelled set, from PyPI.

Usage: python insights_anchors.py eval/insights.jsonl > anchors.jsonl
Writes one JSON line per message: {"id", "presidio": [{"type", "start", "end",
"score"}], "vader": compound}.

Presidio's NER recognisers need a spaCy model (en_core_web_lg), which is not on
PyPI and may not be downloaded here; Presidio runs with a blank English spaCy
pipeline instead, so its pattern recognisers (email, phone, card, IBAN, SSN, IP,
URL, dates, ...) work as shipped and its NER types (PERSON, LOCATION) find
nothing. Presidio types map to Cairn's: EMAIL_ADDRESS->email,
PHONE_NUMBER->phone, CREDIT_CARD->credit_card, IBAN_CODE->iban, US_SSN->us_ssn,
IP_ADDRESS->ip_address, URL->url, PERSON->person, LOCATION->street_address,
DATE_TIME->date_of_birth; other Presidio types are reported as-is (the scorer
ignores types it has no label for).
"""
import json
import sys

import spacy
import tldextract
import tldextract.tldextract

# Presidio's email and URL recognisers call tldextract, which would fetch the
# public suffix list from the network; use the snapshot bundled with it.
tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import SpacyNlpEngine
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

MAP = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "credit_card",
    "IBAN_CODE": "iban",
    "US_SSN": "us_ssn",
    "IP_ADDRESS": "ip_address",
    "URL": "url",
    "PERSON": "person",
    "LOCATION": "street_address",
    "DATE_TIME": "date_of_birth",
}


class BlankSpacy(SpacyNlpEngine):
    """spaCy without a downloaded model."""

    def load(self):
        self.nlp = {"en": spacy.blank("en")}


def main():
    engine = BlankSpacy(models=[{"lang_code": "en", "model_name": "blank"}])
    engine.load()
    analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    vader = SentimentIntensityAnalyzer()
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            text = item["text"]
            found = analyzer.analyze(text=text, language="en")
            out = {
                "id": item["id"],
                "presidio": [
                    {"type": MAP.get(r.entity_type, r.entity_type), "start": r.start, "end": r.end, "score": r.score}
                    for r in found
                ],
                "vader": vader.polarity_scores(text)["compound"],
            }
            print(json.dumps(out))


if __name__ == "__main__":
    main()
