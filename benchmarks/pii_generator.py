"""Labelled Chinese clinical records for scoring PII/PHI detection, from templates written before the
detector was looked at (issue 13: a test set written with the rules measures the rules' author).

    python benchmarks/pii_generator.py [--records 1000] [--seed 13] [--out tests/fixtures/pii_gen]

Writes `dev.jsonl` and `test.jsonl`: {"id", "genre", "template", "text", "spans": [{"start", "end",
"type", "value"}]}. Templates are split between dev and test (every genre has templates in both), so
the test split's sentence shapes were never seen while tuning on dev. Tune only on dev.

Types (medtune's names): NAME, ADDRESS, ID_CARD, PHONE, BANK_CARD, RECORD_NO (MRN), DOB, EMAIL.
Conventions: a name's span is the name alone (王医生 → 王: the surname is the PII; 张伟说 → 张伟); a
labelled value's span is the value (住院号：ZY2023001 → ZY2023001); an address runs from its first
administrative level to its last unit (room); a date of birth is the date. Decoys (never PII): drug and
herb names, hospitals and departments, lab values, visit / admission dates, bed and order numbers, ID
numbers with a wrong checksum and card numbers that fail Luhn, doses, ages.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

# --- names ------------------------------------------------------------------------------------------
# Surnames with their approximate share of the population (‰, 2020 household registration ranking).
SURNAMES = {"王": 74, "李": 72, "张": 68, "刘": 54, "陈": 46, "杨": 32, "黄": 24, "赵": 20, "吴": 19, "周": 19,
            "徐": 14, "孙": 13, "马": 12, "朱": 11, "胡": 11, "郭": 11, "何": 10, "林": 10, "高": 10, "罗": 10,
            "郑": 9, "梁": 9, "谢": 7, "宋": 7, "唐": 7, "许": 6, "韩": 6, "冯": 6, "邓": 6, "曹": 6, "彭": 5,
            "曾": 5, "肖": 5, "田": 5, "董": 5, "潘": 4, "袁": 4, "蔡": 4, "蒋": 4, "余": 4, "于": 4, "杜": 4,
            "叶": 4, "程": 4, "魏": 4, "苏": 3, "吕": 3, "丁": 3, "任": 3, "卢": 3, "姚": 3, "沈": 3, "钟": 3,
            "姜": 3, "崔": 3, "谭": 3, "陆": 3, "范": 2, "汪": 2, "廖": 2, "石": 2, "金": 2, "韦": 2, "贾": 2,
            "夏": 2, "付": 2, "方": 2, "邹": 2, "熊": 2, "白": 2, "孟": 2, "秦": 2, "邱": 2, "侯": 2, "江": 2,
            "尹": 2, "薛": 2, "闫": 2, "段": 2, "雷": 2, "龙": 1, "黎": 1, "史": 1, "陶": 1, "贺": 1, "毛": 1,
            "郝": 1, "顾": 1, "龚": 1, "邵": 1, "万": 1, "覃": 1, "武": 1, "钱": 1, "戴": 1, "严": 1, "莫": 1,
            "孔": 1, "向": 1, "常": 1, "汤": 1, "康": 1, "易": 1, "乔": 1, "赖": 1, "文": 1, "甘": 1, "连": 1,
            "欧阳": 1, "司马": 1, "诸葛": 1, "上官": 1, "慕容": 1, "皇甫": 1, "东方": 1, "尉迟": 1, "公孙": 1,
            "令狐": 1, "夏侯": 1, "长孙": 1}
GIVEN = list("伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超霞平刚桂兰玉萍建华红梅志国海波鹏飞辉宇浩然子涵"
             "欣怡梓轩雨婷佳琪思远晨阳嘉怡诗雅俊杰文博天佑一鸣若曦紫萱振华永红淑珍凤英秀梅立新春燕")
# Names that are also medical words (a herb, a word): still names in a name's position.
WORD_NAMES = ["陈皮", "丁香", "白芷", "甘草", "连翘", "高明", "黄精", "石斛", "常山", "白术"]

# --- decoys -----------------------------------------------------------------------------------------
DRUGS = ["阿莫西林胶囊", "布洛芬缓释胶囊", "二甲双胍", "氨氯地平", "阿托伐他汀钙片", "奥美拉唑", "头孢克肟",
         "硝苯地平控释片", "甲钴胺", "左氧氟沙星", "黄连上清丸", "六味地黄丸", "连花清瘟胶囊", "丹参滴丸"]
HERBS = ["黄芪", "当归", "甘草", "陈皮", "白术", "茯苓", "党参", "川芎", "丁香", "白芷", "连翘", "石斛"]
HOSPITALS = ["北京协和医院", "四川大学华西医院", "复旦大学附属中山医院", "浙江大学医学院附属第一医院",
             "中山大学附属第一医院", "武汉同济医院", "湘雅医院", "上海市第六人民医院", "南京鼓楼医院"]
DEPTS = ["心内科", "消化内科", "呼吸与危重症医学科", "内分泌科", "神经内科", "骨科", "妇产科", "儿科",
         "普外科", "肿瘤科", "中医科"]
SYMPTOMS = ["反复胸闷气短3天", "上腹部隐痛1周", "发热伴咳嗽2天", "头晕乏力半月", "双下肢水肿1月",
            "间断腹泻5天", "右膝关节疼痛2年", "血糖控制不佳3月", "心悸、失眠1周", "咽痛伴低热3天"]
DIAGNOSES = ["冠状动脉粥样硬化性心脏病", "2型糖尿病", "慢性胃炎", "社区获得性肺炎", "高血压病3级",
             "腰椎间盘突出症", "甲状腺结节", "缺铁性贫血", "慢性阻塞性肺疾病", "膝骨关节炎"]
LABS = ["血红蛋白 {a} g/L", "白细胞 {b}×10^9/L", "空腹血糖 {c} mmol/L", "肌酐 {d} μmol/L",
        "糖化血红蛋白 {e}%", "ALT {f} U/L", "血小板 {g}×10^9/L"]
REGIONS = ["110101", "110105", "310104", "310115", "330106", "330102", "440305", "440106", "510107", "420102",
           "320102", "370102", "500103", "610113", "350203", "430104", "210102", "120101"]
PLACES = [("浙江省", "杭州市", "西湖区", ["文三路", "古墩路", "天目山路"], ["翠苑", "古荡"]),
          ("北京市", "", "朝阳区", ["建国路", "朝阳北路", "望京街"], ["望京", "八里庄"]),
          ("上海市", "", "徐汇区", ["漕溪北路", "宜山路", "虹桥路"], ["田林", "康健"]),
          ("广东省", "广州市", "天河区", ["天河路", "中山大道", "黄埔大道"], ["石牌", "员村"]),
          ("四川省", "成都市", "武侯区", ["人民南路", "科华北路", "武侯祠大街"], ["玉林", "浆洗街"]),
          ("湖北省", "武汉市", "江汉区", ["解放大道", "建设大道", "新华路"], ["万松", "唐家墩"]),
          ("江苏省", "南京市", "鼓楼区", ["中山路", "湖南路", "北京西路"], ["宁海路", "湖南路"]),
          ("山东省", "济南市", "历下区", ["经十路", "泉城路", "解放路"], ["趵突泉", "泺源"]),
          ("河南省", "郑州市", "金水区", ["花园路", "农业路", "文化路"], ["丰产路", "经八路"])]
ESTATES = ["阳光花园", "金色家园", "翠苑三区", "锦绣华庭", "幸福里小区", "万科城", "绿地世纪城", "碧桂园"]
VILLAGES = [("安徽省", "六安市", "霍邱县", "城西湖乡", "王截流村"), ("河南省", "周口市", "淮阳区", "白楼镇", "李庄村"),
            ("湖南省", "邵阳市", "隆回县", "桃洪镇", "新建村"), ("四川省", "南充市", "仪陇县", "新政镇", "红星村")]
KIN = ["母亲", "父亲", "妈妈", "爸爸", "女儿", "儿子", "爱人", "丈夫", "妻子", "老伴", "外婆", "爷爷", "奶奶", "哥哥"]
EMAIL_DOMAINS = ["163.com", "qq.com", "126.com", "sina.com", "hospital.org.cn", "gmail.com"]
CN_DIGITS = "〇一二三四五六七八九"
FULL = str.maketrans("0123456789", "０１２３４５６７８９")


class Filler:
    """Draws slot values; `fill` turns a template into (text, spans)."""

    def __init__(self, rng: random.Random, given: list[str] = GIVEN) -> None:
        self.rng, self.given = rng, given
        self.surnames, self.weights = list(SURNAMES), list(SURNAMES.values())

    # names
    def surname(self) -> str:
        return self.rng.choices(self.surnames, self.weights)[0]

    def name(self) -> str:
        if self.rng.random() < 0.04:
            return self.rng.choice(WORD_NAMES)
        s = self.surname()
        n = 1 if len(s) == 2 and self.rng.random() < 0.6 else self.rng.choice([1, 2, 2])
        return s + "".join(self.rng.choice(self.given) for _ in range(n))

    # numbers
    def digits(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789") for _ in range(n))

    def dob_parts(self) -> tuple[int, int, int]:
        return self.rng.randint(1935, 2018), self.rng.randint(1, 12), self.rng.randint(1, 28)

    def id18(self, valid: bool = True) -> str:
        y, m, d = self.dob_parts()
        body = f"{self.rng.choice(REGIONS)}{y:04d}{m:02d}{d:02d}{self.digits(3)}"
        check = _id_check(body)
        if not valid:
            check = self.rng.choice([c for c in "0123456789X" if c != check])
        return body + check

    def id_card(self) -> str:
        r = self.rng.random()
        if r < 0.15:  # the old 15-digit number
            y, m, d = self.dob_parts()
            return f"{self.rng.choice(REGIONS)}{y % 100:02d}{m:02d}{d:02d}{self.digits(3)}"
        value = self.id18()
        if r < 0.3:
            return f"{value[:6]} {value[6:14]} {value[14:]}"
        if r < 0.37:
            return value.translate(FULL)
        return value

    def mobile(self) -> str:
        return f"1{self.rng.choice('3456789')}{self.digits(9)}"

    def phone(self) -> str:
        m, r = self.mobile(), self.rng.random()
        if r < 0.45:
            return m
        if r < 0.55:
            return f"{m[:3]} {m[3:7]} {m[7:]}"
        if r < 0.62:
            return f"+86 {m}"
        if r < 0.68:
            return f"+86-{m[:3]}-{m[3:7]}-{m[7:]}"
        if r < 0.73:
            return f"0086{m}"
        if r < 0.78:
            return f"(+86){m}"
        if r < 0.83:
            return m.translate(FULL)
        area = self.rng.choice(["010", "021", "020", "028", "0571", "025", "027", "0531"])
        local = self.digits(8 if len(area) == 3 else 7)
        return self.rng.choice([f"{area}-{local}", f"({area}){local}", f"（{area}）{local}",
                                f"{area} {local[:4]} {local[4:]}", f"{area}-{local[:4]} {local[4:]}"])

    def bank(self, valid: bool = True) -> str:
        n = self.rng.choice([16, 19, 19])
        body = self.rng.choice(["6222", "6228", "6217", "6214", "6225", "6212"]) + self.digits(n - 5)
        check = _luhn_digit(body)
        if not valid:
            check = str((int(check) + self.rng.randint(1, 9)) % 10)
        value = body + check
        if self.rng.random() < 0.45:
            value = " ".join(value[i:i + 4] for i in range(0, len(value), 4))
        return value

    def mrn(self) -> tuple[str, str]:
        label = self.rng.choice(["病历号", "住院号", "门诊号", "登记号", "ID号", "病案号", "就诊卡号", "患者ID",
                                 "检查号", "影像号", "住院号码", "门诊ID"])
        r = self.rng.random()
        value = (self.digits(self.rng.randint(6, 10)) if r < 0.6 else
                 f"{self.rng.choice(['ZY', 'MZ', 'BA', 'H', 'P'])}{self.rng.randint(2015, 2024)}{self.digits(5)}")
        return label, value

    def dob(self) -> str:
        y, m, d = self.dob_parts()
        r = self.rng.random()
        if r < 0.35:
            return f"{y}年{m}月{d}日"
        if r < 0.5:
            return f"{y}-{m:02d}-{d:02d}"
        if r < 0.6:
            return f"{y}.{m}.{d}"
        if r < 0.72:
            return f"{y}{m:02d}{d:02d}"
        if r < 0.88:
            return f"{_cn_year(y)}年{_cn_number(m)}月{_cn_number(d)}日"
        return f"{y}/{m:02d}/{d:02d}"

    def email(self) -> str:
        user = self.rng.choice(["zhang", "li", "wang", "liu", "chen", "dr.yang", "huang_l", "zhao", "sun.mm"])
        return f"{user}{self.rng.randint(1, 9999)}@{self.rng.choice(EMAIL_DOMAINS)}"

    def address(self) -> str:
        r = self.rng.random()
        if r < 0.2:
            prov, city, county, town, village = self.rng.choice(VILLAGES)
            start = self.rng.choice([prov + city, city, ""])
            return f"{start}{county}{town}{village}{self.rng.randint(1, 9)}组{self.rng.randint(1, 60)}号"
        prov, city, district, roads, _ = self.rng.choice(PLACES)
        start = self.rng.choice([prov + city, city or prov, district])  # province, city or district level
        if start == district:
            start = (city or prov) + district if self.rng.random() < 0.5 else district
        elif not start.endswith(district):
            start += district
        tail = f"{self.rng.choice(roads)}{self.rng.randint(1, 999)}号"
        if self.rng.random() < 0.6:
            tail += f"{self.rng.choice(ESTATES)}{self.rng.randint(1, 30)}栋{self.rng.randint(1, 6)}单元" \
                    f"{self.rng.randint(1, 32)}{self.rng.randint(1, 4):02d}室"
        elif self.rng.random() < 0.5:
            tail += f"{self.rng.randint(1, 20)}号楼{self.rng.randint(101, 2508)}室"
        return start + tail

    # decoys
    def decoy(self, kind: str) -> str:
        r = self.rng
        return {"DRUG": lambda: r.choice(DRUGS), "HERB": lambda: r.choice(HERBS), "HOSP": lambda: r.choice(HOSPITALS),
                "DEPT": lambda: r.choice(DEPTS), "SYM": lambda: r.choice(SYMPTOMS), "DX": lambda: r.choice(DIAGNOSES),
                "LAB": lambda: r.choice(LABS).format(a=r.randint(80, 160), b=round(r.uniform(3, 15), 1),
                                                     c=round(r.uniform(4, 14), 1), d=r.randint(40, 300),
                                                     e=round(r.uniform(5, 11), 1), f=r.randint(8, 120),
                                                     g=r.randint(80, 400)),
                "VISIT": lambda: f"{r.randint(2019, 2024)}年{r.randint(1, 12)}月{r.randint(1, 28)}日",
                "VISITD": lambda: f"{r.randint(2019, 2024)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
                "BED": lambda: f"{r.randint(1, 60)}床", "AGE": lambda: f"{r.randint(1, 95)}岁",
                "DOSE": lambda: f"{r.choice([0.25, 0.5, 1, 2, 5, 10, 20])}{r.choice(['mg', 'g', 'ml'])}",
                "ORDER": lambda: f"{r.randint(2019, 2024)}{self.digits(10)}",
                "BADID": lambda: self.id18(valid=False), "BADBANK": lambda: self.bank(valid=False),
                "FEE": lambda: f"{r.randint(20, 20000)}.{r.randint(0, 99):02d}元",
                "SEX": lambda: r.choice(["男", "女"]), "KIN": lambda: r.choice(KIN)}[kind]()

    def fill(self, template: str) -> tuple[str, list[dict]]:
        """Slots: {P} {P2} {D} {N} {R} names (the same slot is the same person), {Ps}/{Ds} a surname
        alone, {ADDR} {PHONE} {PHONE2} {ID} {BANK} {MRN} (label + value) {MRNV} (value, the template's own
        label) {DOB} {EMAIL}; decoys {DRUG} {HERB} {HOSP} {DEPT} {SYM} {DX} {LAB} {VISIT} {VISITD} {BED}
        {AGE} {DOSE} {ORDER} {BADID} {BADBANK} {FEE} {SEX} {KIN}."""
        people: dict[str, str] = {}
        values: dict[str, str] = {}
        text, spans, pos = [], [], 0
        for m in re.finditer(r"\{([A-Z]+[0-9]?s?)\}", template):
            text.append(template[pos:m.start()])
            offset = sum(map(len, text))
            slot = m.group(1)
            kind, value, span = None, "", None
            if slot.rstrip("s").rstrip("0123456789") in ("P", "D", "N", "R"):
                person = slot.rstrip("s")
                if person not in people:
                    people[person] = self.name()
                full = people[person]
                if slot.endswith("s"):
                    value = _surname_of(full)
                else:
                    value = full
                kind = "NAME"
            elif slot in ("ADDR", "PHONE", "PHONE2", "ID", "BANK", "DOB", "EMAIL", "MRNV"):
                if slot not in values:
                    values[slot] = {"ADDR": self.address, "PHONE": self.phone, "PHONE2": self.phone, "ID": self.id_card,
                                    "BANK": self.bank, "DOB": self.dob, "EMAIL": self.email,
                                    "MRNV": lambda: self.mrn()[1]}[slot]()
                value = values[slot]
                kind = {"ADDR": "ADDRESS", "PHONE": "PHONE", "PHONE2": "PHONE", "ID": "ID_CARD", "BANK": "BANK_CARD",
                        "DOB": "DOB", "EMAIL": "EMAIL", "MRNV": "RECORD_NO"}[slot]
            elif slot == "MRN":
                label, v = self.mrn()
                sep = self.rng.choice(["：", ":", " ", "："])
                value = f"{label}{sep}{v}"
                span = (offset + len(label) + len(sep), offset + len(value), "RECORD_NO", v)
            else:
                value = self.decoy(slot)
            if kind:
                span = (offset, offset + len(value), kind, value)
            if span:
                spans.append({"start": span[0], "end": span[1], "type": span[2], "value": span[3]})
            text.append(value)
            pos = m.end()
        text.append(template[pos:])
        out = "".join(text)
        for s in spans:
            assert out[s["start"]:s["end"]] == s["value"], (template, s)
        return out, spans


def _surname_of(name: str) -> str:
    return name[:2] if name[:2] in SURNAMES and len(name[:2]) == 2 else name[0]


def _id_check(body: str) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return "10X98765432"[sum(int(c) * w for c, w in zip(body, weights, strict=True)) % 11]


def _luhn_digit(body: str) -> str:
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def _cn_year(y: int) -> str:
    return "".join(CN_DIGITS[int(c)] for c in str(y))


def _cn_number(n: int) -> str:
    if n < 10:
        return CN_DIGITS[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else CN_DIGITS[tens]) + "十" + (CN_DIGITS[ones] if ones else "")


# --- templates, written first -------------------------------------------------------------------------
# (genre, split, template). Every genre has dev and test templates.
TEMPLATES: list[tuple[str, str, str]] = [
    # 出院小结 (discharge summary)
    ("discharge", "dev", "出院小结\n姓名：{P}　性别：{SEX}　年龄：{AGE}　{MRN}\n入院日期：{VISIT}　出院日期：{VISIT}\n"
     "入院诊断：{DX}\n诊疗经过：患者因{SYM}入院，予{DRUG}治疗，{LAB}。\n出院医嘱：继续口服{DRUG} {DOSE} 每日一次。\n"
     "主治医师：{D}　经治医生：{N}"),
    ("discharge", "dev", "{HOSP}{DEPT}出院记录\n患者{P}，{SEX}，{AGE}，身份证号{ID}，现住{ADDR}。\n因“{SYM}”于{VISITD}入院。"
     "出院诊断：{DX}。出院带药：{DRUG}。\n随访电话：{PHONE}\n医师签名：{D}"),
    ("discharge", "dev", "出院小结　{MRN}　床号：{BED}\n{P}　{SEX}　出生日期：{DOB}\n家属{R}（{KIN}）已知悉病情，联系电话{PHONE}。\n"
     "复查：{LAB}，较前好转。嘱{Ds}医生门诊随诊。"),
    ("discharge", "test", "出 院 记 录\n住院号：{MRNV}　姓名：{P}\n出生年月：{DOB}　联系地址：{ADDR}\n"
     "入院情况：{SYM}。出院时{LAB}。\n出院医嘱：{DRUG}、{HERB}代茶饮。\n上级医师：{D}　记录者：{N}"),
    ("discharge", "test", "患者{P}，{AGE}，因{DX}在我院{DEPT}住院治疗，{VISIT}好转出院。其{KIN}{R}陪同，"
     "手机{PHONE}。患者身份证{ID}。主管医生{Ds}主任交代注意事项。"),
    ("discharge", "test", "{HOSP}　出院小结\n病案号 {MRNV}\n病人姓名　{P}　生于{DOB}\n住址：{ADDR}\n"
     "诊断：{DX}；{LAB}；医嘱：{DRUG} {DOSE}。\n签名：{D}"),
    # 门诊病历 (outpatient note)
    ("outpatient", "dev", "门诊病历　{DEPT}\n{MRN}\n{P}，{SEX}，{AGE}。\n主诉：{SYM}。\n处理：{DRUG} {DOSE}，{LAB}待复查。\n"
     "接诊医生：{D}"),
    ("outpatient", "dev", "就诊日期：{VISITD}\n患者 {P} 诉{SYM}，既往{DX}史。电话：{PHONE}\n体格检查未见明显异常。"
     "{Ds}医师建议行胃镜检查。"),
    ("outpatient", "dev", "门诊记录\n姓名:{P} 出生日期:{DOB} {MRN}\n现病史：{SYM}，自服{HERB}、{DRUG}无效。\n"
     "诊断：{DX}\n医生：{D}　护士：{N}"),
    ("outpatient", "test", "初诊　{VISIT}\n{P}说最近{SYM}，夜间加重。\n门诊号{MRNV}，住{ADDR}。\n辅助检查：{LAB}。"
     "\n处方：{DRUG}。\n{D}（主治医师）"),
    ("outpatient", "test", "{DEPT}门诊\n病人：{P}（{SEX}，{AGE}）\n联系方式：{PHONE}；邮箱：{EMAIL}\n主诉{SYM}，"
     "{LAB}。考虑{DX}。\n由{N}护士分诊，{Ds}大夫接诊。"),
    ("outpatient", "test", "复诊记录：患者{P}复诊，{LAB}，较上次好转。{KIN}{R}代诉患者睡眠差。继续{DRUG}。"
     "登记号：{MRNV}　医生签字：{D}"),
    # 在线问诊 (forum consult)
    ("consult", "dev", "医生您好，我叫{P}，今年{AGE}，{SYM}，吃了{DRUG}也不见好，请问需要去{HOSP}看吗？"
     "我的电话是{PHONE}，麻烦您回复。"),
    ("consult", "dev", "{Ds}医生您好！我{KIN}{R}{SYM}，在当地查了{LAB}，说是{DX}，想请您看看报告。"
     "我们住在{ADDR}，离{HOSP}很远。"),
    ("consult", "dev", "您好，我是{P}，上次您给我开的{HERB}和{DRUG}吃完了，还需要继续吗？可以加我微信或打{PHONE}。"),
    ("consult", "test", "{D}大夫：您好。我{KIN}叫{R}，{AGE}，{SYM}，{VISIT}在{HOSP}{DEPT}做了检查，{LAB}。"
     "请问严重吗？我的邮箱{EMAIL}。"),
    ("consult", "test", "问：我老公{R}最近{SYM}，他说没事，我很担心。需要做什么检查？\n答：{R}先生您好，建议到{DEPT}就诊。"
     "\n——{Ds}医生"),
    ("consult", "test", "本人{P}，{SEX}，{AGE}，{SYM}。{HOSP}诊断{DX}。想咨询{D}主任能否加号，联系人{R}，"
     "电话{PHONE}。"),
    # 处方笺 (prescription)
    ("prescription", "dev", "{HOSP}处方笺\n费别：自费　{MRN}\n姓名：{P}　性别：{SEX}　年龄：{AGE}\n临床诊断：{DX}\n"
     "Rp：{DRUG} {DOSE} ×7天\n　　{HERB} 10g\n医师：{D}　审核：{N}　金额：{FEE}"),
    ("prescription", "dev", "处方\n患者：{P}　电话：{PHONE}\n地址：{ADDR}\n{DRUG} {DOSE} bid\n医生签名：{D}\n"
     "调配药师：{N}"),
    ("prescription", "test", "中药处方　{VISITD}\n{P}　{SEX}　{AGE}　门诊ID：{MRNV}\n{HERB}15g　{HERB}10g　{HERB}6g\n"
     "共七剂，水煎服。\n开方医师：{D}　核对：{N}"),
    ("prescription", "test", "电子处方\n就诊人{P}（出生{DOB}）\n身份证：{ID}\n药品：{DRUG} {DOSE}\n开具：{Ds}医生　"
     "配送地址：{ADDR}　收货电话：{PHONE}"),
    # 转诊单 (referral)
    ("referral", "dev", "转诊单\n转出医院：{HOSP}　转入医院：{HOSP}\n患者姓名：{P}　{MRN}\n身份证号码：{ID}\n"
     "初步诊断：{DX}\n转诊原因：{SYM}，需进一步诊治。\n转诊医生：{D}　联系电话：{PHONE}"),
    ("referral", "dev", "双向转诊（上转）单\n{P}，{AGE}，家住{ADDR}，因{DX}转上级医院。陪同人：{R}（{KIN}），电话{PHONE}。"
     "\n经办人：{N}"),
    ("referral", "test", "转院申请\n兹有我院{DEPT}患者{P}（住院号：{MRNV}），出生于{DOB}，因{SYM}转至{HOSP}。"
     "\n申请医师 {D}　科主任 {Ds}主任"),
    ("referral", "test", "会诊/转诊记录：请{HOSP}{DEPT}{D}教授会诊。患者{P}，{LAB}，考虑{DX}。家属{R}同意转诊，"
     "联系{PHONE}。"),
    # 检验报告 (lab report)
    ("lab", "dev", "{HOSP}检验报告单\n姓名：{P}　性别：{SEX}　年龄：{AGE}　{MRN}\n科室：{DEPT}　床号：{BED}\n"
     "检验项目：{LAB}；{LAB}\n送检医生：{D}　检验者：{N}　报告日期：{VISITD}"),
    ("lab", "dev", "影像检查报告\n{MRN}\n受检者：{P}　出生日期：{DOB}\n检查所见：双肺纹理增粗。\n报告医师：{D}　审核医师：{D2}"),
    ("lab", "test", "检验报告　条码号{ORDER}\n{P}　{SEX}　{AGE}\n病历号 {MRNV}\n结果：{LAB}，{LAB}\n"
     "采样：{N}　审核：{D}"),
    ("lab", "test", "体检报告\n体检编号：{ORDER}\n姓名 {P}　身份证 {ID}\n手机 {PHONE}\n总检结论：{LAB}，建议{DEPT}随诊。"
     "\n主检医师：{D}"),
    # 护理记录 (nursing note)
    ("nursing", "dev", "护理记录\n{BED} {P}，{AGE}，{DX}术后第一天，生命体征平稳，{LAB}。\n"
     "责任护士：{N}　护士长：{N2}"),
    ("nursing", "dev", "交班记录：{BED}患者{P}夜间诉{SYM}，已通知值班医生{D}，遵医嘱予{DRUG} {DOSE}。家属{R}在旁陪护。"),
    ("nursing", "test", "护理交接\n{BED}　{P}　{MRN}\n{SYM}，{LAB}。{N}护士巡视，{Ds}医生查房后调整{DRUG}剂量。"),
    ("nursing", "test", "入院护理评估：患者{P}，{AGE}，{SEX}，由其{KIN}{R}陪同入院，联系电话{PHONE}，家庭住址{ADDR}。"
     "\n评估护士：{N}"),
    # 医保 / 报销 / 退费 (claims)
    ("claim", "dev", "医疗费用报销申请表\n申请人：{P}　身份证号：{ID}\n就诊医院：{HOSP}　{MRN}\n费用合计：{FEE}\n"
     "开户银行：中国工商银行　收款人：{P}　银行卡号：{BANK}\n联系电话：{PHONE}"),
    ("claim", "dev", "退费申请\n患者{P}于{VISIT}在{DEPT}缴费{FEE}，因故未检查，申请退费。退款账户：{BANK}（户名：{R}）"
     "\n经办人签字：{N}"),
    ("claim", "test", "商业保险理赔材料清单\n被保险人 {P}　出生日期 {DOB}\n证件号 {ID}\n领款人：{R}　账号 {BANK}\n"
     "住院号 {MRNV}　理赔金额 {FEE}\n联系邮箱 {EMAIL}"),
    ("claim", "test", "医保异地备案：参保人{P}，现居住地{ADDR}，联系电话{PHONE}。备案医院{HOSP}。"
     "代办人：{R}（{KIN}）。"),
    ("claim", "dev", "住院押金退款：请将{FEE}退至{R}的银行卡{BANK}，开户行：招商银行。患者{P}，{MRN}，"
     "如有疑问请发邮件至{EMAIL}。"),
    ("claim", "test", "慈善救助申请\n申请人 {P}　{KIN}：{R}\n收款账户：{BANK}\n开户名：{R}\n联系电话：{PHONE}\n"
     "电子邮箱：{EMAIL}"),
    ("claim", "test", "报销回执：{P}的{FEE}已转入尾号账户，卡号{BANK}，如未到账请联系{N}（{PHONE}）。"),
    ("consult", "dev", "大夫您好，报告我拍照发到您邮箱{EMAIL}了。我{KIN}{R}{SYM}，{LAB}，谢谢！"),
    ("lab", "dev", "心电图报告\n受检人：{P}　{SEX}　{AGE}\n{MRN}\n结论：窦性心律。\n操作员：{N}　诊断者：{D}"),
    ("prescription", "dev", "发药单\n领药人：{R}　患者：{P}\n{DRUG} {DOSE}\n发药员：{N}　复核人：{D}"),
    ("nursing", "dev", "输液记录\n{BED}　{P}\n配药者：{N}　执行者：{N2}　巡视人：{N}"),
    ("consent", "dev", "病危通知书\n患者{P}病情危重。\n家属签名：{R}　与患者关系：{KIN}　告知医师：{D}"),
    # 知情同意书 (consent)
    ("consent", "dev", "手术知情同意书\n患者姓名：{P}　{MRN}\n拟行手术：腹腔镜胆囊切除术\n患者签名：{P}　"
     "被授权人签名：{R}　与患者关系：{KIN}\n谈话医师：{D}　日期：{VISITD}"),
    ("consent", "test", "授权委托书\n本人{P}（身份证号{ID}），因病委托{R}（{KIN}，电话{PHONE}）代为签署医疗文书。"
     "\n委托人：{P}　受托人：{R}\n见证医生：{D}"),
]


# A third split, written after the rules had been tuned on dev and checked once against test (whose
# errors were then looked at): its templates were written before any rule saw them, and it is scored
# once. It is the figure to quote.
HOLDOUT: list[tuple[str, str, str]] = [
    ("discharge", "holdout", "【出院记录】{HOSP}\n病员：{P}　年龄：{AGE}　科别：{DEPT}　{MRN}\n现病史：{SYM}。\n"
     "出院情况：{LAB}。出院后请联系{D}医师复诊，科室电话{PHONE}。"),
    ("discharge", "holdout", "{P}（{SEX}，{AGE}）于{VISIT}出院。出生日期{DOB}，户籍地址{ADDR}。陪护家属：{R}。"),
    ("outpatient", "holdout", "门诊日志 {VISITD}\n{MRN}　姓名 {P}\n主诉：{SYM}\n医嘱：{DRUG} {DOSE}，一周后复查{LAB}。"
     "\n（{Ds}医生）"),
    ("outpatient", "holdout", "急诊病历：{P}，{AGE}，由{KIN}{R}送来就诊，{SYM}。既往史：{DX}。接诊：{D}；分诊护士：{N}。"),
    ("consult", "holdout", "各位医生好，我是{P}的家属，她{AGE}，{SYM}，当地医院说是{DX}。想挂{D}专家的号，"
     "能否回电{PHONE}？"),
    ("consult", "holdout", "{Ds}主任，您好！上周在您那里看过，病历号{MRNV}。吃了{DRUG}以后{SYM}，还要继续吃吗？"
     "——患者{P}"),
    ("prescription", "holdout", "【处方】{HOSP}\n{P}　{SEX}　{AGE}\n{DRUG} {DOSE} tid po\n{HERB} 12g\n"
     "处方医师：{D}　发药：{N}\n取药人手机：{PHONE}"),
    ("prescription", "holdout", "网上复诊续方：就诊人{P}，证件号码{ID}，收货人{R}，收货地址{ADDR}，电话{PHONE}。"),
    ("referral", "holdout", "转诊介绍信\n{HOSP}{DEPT}：\n兹介绍我院患者{P}（{SEX}，{AGE}，{MRN}）前往贵院就诊，"
     "诊断{DX}。\n介绍医生：{D}　{VISIT}"),
    ("lab", "holdout", "病理报告\n送检者：{P}　出生：{DOB}\n{MRN}\n肉眼所见：灰白组织一块。\n诊断医师：{D}　复核：{D2}"),
    ("lab", "holdout", "核酸检测结果：{P}，身份证号码{ID}，手机号{PHONE}，采样时间{VISITD}，结果阴性。"),
    ("nursing", "holdout", "{BED}　{P}　{SEX}　{AGE}\n护理诊断：疼痛。措施：遵医嘱予{DRUG}。\n执行护士：{N}　签名时间：{VISITD}"),
    ("claim", "holdout", "大病医疗救助申请书\n申请人：{P}　身份证：{ID}\n家庭住址：{ADDR}\n开户行：农业银行　"
     "账号：{BANK}　持卡人：{P}\n联系人：{R}　电话：{PHONE}"),
    ("claim", "holdout", "理赔通知：尊敬的{P}女士，您的理赔款{FEE}将汇入尾号为{BANK}的银行卡。如有疑问请致电{PHONE}或发邮件至{EMAIL}。"),
    ("consent", "holdout", "麻醉知情同意书\n患者：{P}　{MRN}\n患者本人签字：{P}\n家属签字：{R}（关系：{KIN}）\n"
     "麻醉医师签字：{D}　{VISITD}"),
    ("consent", "holdout", "输血治疗同意书。本人{P}，出生于{DOB}，现住{ADDR}，已知晓输血风险。代理人{R}，联系方式{PHONE}，邮箱{EMAIL}。"),
]


# A fourth split (2026-12-07), written before the rules were changed again and before the holdout's errors
# were looked at: holdout has been scored twice and is now tuned on, so it joins dev. New wordings in every
# genre plus genres none of the other splits has (handover, follow-up call, SMS, forum, birth certificate,
# thank-you letter, billing, family chat), and given names drawn from characters the other splits never use.
# Scored once; the figure to quote.
HOLDOUT2: list[tuple[str, str, str]] = [
    ("discharge", "holdout2", "出院小结\n姓　名：{P}　　性别：{SEX}　　年龄：{AGE}\n入院日期：{VISIT}\n入院诊断：{DX}\n"
     "主管医师：{D}　上级医师：{D2}\n随访：出院后两周至{DEPT}门诊复诊，联系电话{PHONE}。"),
    ("handover", "holdout2", "交班记录：{BED}{P}，{DX}术后第2天，生命体征平稳，{LAB}。家属{R}陪护，已告知注意事项。"
     "交班人：{N}　接班人：{N2}"),
    ("consult", "holdout2", "医生你好，我爸{P}今年{AGE}，最近{SYM}，在{HOSP}查了说是{DX}，想问问{Ds}医生这个病严重吗？"
     "我的微信就是手机号{PHONE}。"),
    ("consult", "holdout2", "{Ds}大夫您好，我是上次找您看过的{P}，{SYM}，吃了{DRUG}效果一般，需要换药吗？"),
    ("case", "holdout2", "病例讨论：患儿{P}，{SEX}，{AGE}，因{SYM}入院。{D}主任查房后指示：完善相关检查，必要时请{DEPT}会诊。"
     "记录者：{N}"),
    ("case", "holdout2", "{P}今早诉{SYM}，{D}查看后予{DRUG}{DOSE}口服，嘱其家属{R}留陪。"),
    ("prescription", "holdout2", "电子处方　No.{ORDER}\n患者：{P}　{SEX}　{AGE}　{MRN}\nRp：{DRUG} {DOSE} bid\n"
     "医师：{D}　审核药师：{N}　调配：{N2}"),
    ("lab", "holdout2", "检验报告单\n姓名：{P}　性别：{SEX}　年龄：{AGE}　{MRN}\n送检医生：{D}　标本：静脉血\n结果：{LAB}\n"
     "检验者：{N}　审核者：{N2}\n报告时间：{VISITD}"),
    ("claim", "holdout2", "商业保险理赔申请：被保人{P}，出生年月{DOB}，证件号{ID}，开户人{P}，银行卡号{BANK}，通讯地址{ADDR}，"
     "联系电话{PHONE}，电子邮箱{EMAIL}。"),
    ("referral", "holdout2", "双向转诊单：因病情需要，现将{P}（{MRN}）转至{HOSP}。转出医生{D}，联系手机{PHONE}；接诊医生{D2}。"),
    ("sms", "holdout2", "【{HOSP}】{P}您好，您预约的{DEPT}{Ds}医生门诊时间为{VISIT}，请携带身份证{ID}按时就诊。退订回T"),
    ("forum", "holdout2", "楼主{AGE}，女，去年查出{DX}。我老公{R}陪我去{HOSP}看的，接诊的是{D}教授，人很好。"
     "有同样情况的姐妹可以加我：{EMAIL}"),
    ("followup", "holdout2", "电话随访记录：随访对象{P}，本人接听（{PHONE}）。{SYM}已缓解，继续服用{DRUG}。随访人：{N}，{VISITD}"),
    ("nursing", "holdout2", "护理记录　{VISITD}\n{BED}，{P}，体温37.8℃，遵{D}医嘱予物理降温，{HERB}煎水外敷。\n{N}"),
    ("consent", "holdout2", "特殊检查同意书\n我，{P}，身份证号码：{ID}，现居住于{ADDR}，同意接受增强CT检查。\n签字人：{P}　"
     "关系：本人\n告知医生：{D}"),
    ("outpatient", "holdout2", "初诊　{VISITD}　{DEPT}\n{P}，{SEX}，{AGE}，住址{ADDR}，电话{PHONE}。\n主诉：{SYM}。\n"
     "诊断：{DX}\n处理：{DRUG} {DOSE}\n医师签字：{D}"),
    ("birth", "holdout2", "出生医学证明申请：新生儿母亲{P}，出生日期{DOB}，身份证{ID}；父亲{R}，手机{PHONE}。家庭住址：{ADDR}。"
     "经办人：{N}"),
    ("letter", "holdout2", "尊敬的{Ds}院长：\n我是{DEPT}{BED}患者{P}的女儿{R}，感谢{D}医生和{N}护士对我母亲的精心照顾。"),
    ("chat", "holdout2", "患者家属：{Ds}医生，我妈{P}的{LAB}，要紧吗？\n医生：这个指标偏高，建议复查。\n"
     "患者家属：好的谢谢，我是{R}，电话{PHONE}。"),
    ("billing", "holdout2", "住院费用结算单\n{MRN}\n患者姓名　{P}\n总费用：{FEE}　个人支付：{FEE}\n退款账户：{BANK}（户主{R}）\n"
     "收费员：{N}"),
    ("claim", "holdout2", "更正说明：{P}原登记证件号{BADID}有误，已更正为{ID}；银行卡{BADBANK}无效，改为{BANK}。经办：{N}"),
]
GIVEN2 = list("丹宁琳颖慧倩雪琴蕾薇晶莉婕璐瑶彤萌菲旭东亮斌凯峰晓光宏毅健翔森坤诚锋昊鑫桐悦润泽安福贵珠")


def generate(records: int, seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    filler = Filler(rng)
    out: dict[str, list[dict]] = {"dev": [], "test": []}
    for i in range(records):
        genre, split, template = TEMPLATES[i % len(TEMPLATES)] if i < len(TEMPLATES) else rng.choice(TEMPLATES)
        text, spans = filler.fill(template)
        out[split].append({"id": f"{split}-{len(out[split]):04d}", "genre": genre,
                           "template": TEMPLATES.index((genre, split, template)), "text": text, "spans": spans})
    # The later splits draw from their own generators, so adding one leaves the earlier ones as they were.
    out["holdout"] = _cycle(HOLDOUT, Filler(random.Random(seed + 1)), records // 2)
    out["holdout2"] = _cycle(HOLDOUT2, Filler(random.Random(seed + 2), given=GIVEN2), records // 2)
    return out


def _cycle(templates: list[tuple[str, str, str]], filler: Filler, n: int) -> list[dict]:
    """n records, the templates in turn."""
    rows = []
    for i in range(n):
        genre, split, template = templates[i % len(templates)]
        text, spans = filler.fill(template)
        rows.append({"id": f"{split}-{i:04d}", "genre": genre, "template": i % len(templates), "text": text,
                     "spans": spans})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/pii_gen")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in generate(args.records, args.seed).items():
        (args.out / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                 encoding="utf-8")
        types: dict[str, int] = {}
        for r in rows:
            for s in r["spans"]:
                types[s["type"]] = types.get(s["type"], 0) + 1
        print(f"{split}: {len(rows)} records, {sum(types.values())} spans {dict(sorted(types.items()))}")


if __name__ == "__main__":
    main()
